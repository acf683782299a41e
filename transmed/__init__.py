"""TransMed: multi-modal MRI classification with a CNN stem and transformer fusion.

The public API; see docs/architecture.md for the layers behind it. The names are imported on first
use (PEP 562), so `transmed --help` and a config error answer without loading torch and timm.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .core import __version__

if TYPE_CHECKING:
    from .models import TransMed, create_model, list_models
    from .models.loading import load_model

# public name -> the module that defines it
_LAZY = {
    "TransMed": "transmed.models",
    "create_model": "transmed.models",
    "list_models": "transmed.models",
    "load_model": "transmed.models.loading",
}

__all__ = ["TransMed", "__version__", "create_model", "list_models", "load_model"]


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'transmed' has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value  # imported once; later lookups do not come back here
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
