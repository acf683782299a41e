"""Registered model names. `model.name` in a config picks one; `model.variant` picks TransMed's size."""

from __future__ import annotations

from .registry import register_model
from .transmed import TransMed


@register_model
def transmed(**kwargs) -> TransMed:
    return TransMed(**kwargs)


@register_model
def transmed_tiny(**kwargs) -> TransMed:
    return TransMed(**{**kwargs, "variant": "tiny"})


@register_model
def transmed_small(**kwargs) -> TransMed:
    return TransMed(**{**kwargs, "variant": "small"})


@register_model
def transmed_base(**kwargs) -> TransMed:
    return TransMed(**{**kwargs, "variant": "base"})
