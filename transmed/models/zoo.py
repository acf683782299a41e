"""Registered model names. `model.name` in a config picks one; `model.variant` picks TransMed's size.

Baselines (see baselines.py): `mrnet`, `late_fusion`, `cnn3d` (3D ResNet-10), `cnn3d_densenet121`.
"""

from __future__ import annotations

from .baselines import CNN3D, LateFusion, MRNet
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


@register_model
def late_fusion(**kwargs) -> LateFusion:
    return LateFusion(**kwargs)


@register_model
def mrnet(**kwargs) -> MRNet:
    return MRNet(**kwargs)


@register_model
def cnn3d(**kwargs) -> CNN3D:
    return CNN3D(**kwargs, net="resnet10")


@register_model
def cnn3d_densenet121(**kwargs) -> CNN3D:
    return CNN3D(**kwargs, net="densenet121", num_slices=32)  # five halvings: 32 slices reach the last pooling
