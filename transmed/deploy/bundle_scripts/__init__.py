"""The `scripts/` package of a TransMed MONAI bundle (copied into it by `transmed export --format monai-bundle`).

It imports MONAI and torch only, never transmed: the bundle runs where transmed is not installed.
"""
