"""Model registry in the style of timm: `create_model("transmed_tiny", num_modalities=3, num_outputs=3)`."""

from __future__ import annotations

from typing import Callable

from torch import nn

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    _REGISTRY[fn.__name__] = fn
    return fn


def list_models() -> list[str]:
    return sorted(_REGISTRY)


def create_model(name: str, **kwargs) -> nn.Module:
    """Builds a registered model; `kwargs` go to its constructor (num_modalities, num_outputs, backbone, ...)."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; registered: {', '.join(list_models())}")
    return _REGISTRY[name](**kwargs)
