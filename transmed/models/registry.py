"""Model registry in the style of timm: `create_model("transmed_tiny", num_modalities=3, num_outputs=3)`.

A name may fix some constructor arguments (`transmed_small` is TransMed with `variant="small"`), as a
timm entrypoint merges `dict(variant="small", **kwargs)`: asking that name for another value is an
error, never silently ignored.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from torch import nn


@dataclass(frozen=True)
class Entry:
    """A registered name: the constructor and the arguments the name fixes."""

    constructor: Callable[..., nn.Module]
    fixed: dict[str, Any] = field(default_factory=dict)


_REGISTRY: dict[str, Entry] = {}


def register_model(constructor: Callable[..., nn.Module], name: Optional[str] = None, **fixed: Any) -> Callable[..., nn.Module]:
    """Registers a model class under `name` (default: its `__name__`); `fixed`: the arguments the name fixes."""
    _REGISTRY[name or constructor.__name__] = Entry(constructor, dict(fixed))
    return constructor


def list_models() -> list[str]:
    return sorted(_REGISTRY)


def _entry(name: str) -> Entry:
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; registered: {', '.join(list_models())}")
    return _REGISTRY[name]


def model_arguments(name: str) -> set[str]:
    """The keyword arguments the constructor of model `name` declares (those its name fixes included)."""
    return set(inspect.signature(_entry(name).constructor).parameters)


def fixed_arguments(name: str) -> dict[str, Any]:
    """The constructor arguments the name `name` fixes (`transmed_small`: {"variant": "small"})."""
    return dict(_entry(name).fixed)


def create_model(name: str, **kwargs: Any) -> nn.Module:
    """Builds a registered model; `kwargs` go to its constructor (num_modalities, num_outputs, backbone, ...).

    An argument the name fixes may be repeated with the same value; another value is a ValueError.
    """
    entry = _entry(name)
    for key, value in entry.fixed.items():
        if key in kwargs and kwargs[key] != value:
            raise ValueError(f"model {name!r} fixes {key}={value!r}; got {key}={kwargs[key]!r}")
    return entry.constructor(**{**kwargs, **entry.fixed})
