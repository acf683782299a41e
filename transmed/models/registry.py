"""Model registry in the style of timm: `create_model("transmed_tiny", num_modalities=3, num_outputs=3)`."""

from __future__ import annotations

import inspect
from functools import partial
from typing import Callable, Optional

from torch import nn

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}


def register_model(constructor: Callable[..., nn.Module], name: Optional[str] = None) -> Callable[..., nn.Module]:
    """Registers a model class or a `functools.partial` of one under `name` (default: its `__name__`)."""
    _REGISTRY[name or constructor.__name__] = constructor
    return constructor


def list_models() -> list[str]:
    return sorted(_REGISTRY)


def model_arguments(name: str) -> set[str]:
    """The keyword arguments the constructor of model `name` declares, less those its registration fixes
    (`transmed_small` fixes `variant`)."""
    constructor = _REGISTRY[name]
    fixed = set(constructor.keywords) if isinstance(constructor, partial) else set()
    return set(inspect.signature(constructor).parameters) - fixed


def create_model(name: str, **kwargs) -> nn.Module:
    """Builds a registered model; `kwargs` go to its constructor (num_modalities, num_outputs, backbone, ...)."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; registered: {', '.join(list_models())}")
    return _REGISTRY[name](**kwargs)
