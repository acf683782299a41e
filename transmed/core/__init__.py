"""The bottom layer: what every other layer shares (errors, label spec, checkpoint files, small I/O).

Nothing here imports another part of `transmed` (see docs/architecture.md).
"""

__version__ = "0.1.0"  # the package version (pyproject.toml), recorded in exports
