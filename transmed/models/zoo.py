"""Registered model names. `model.name` in a config picks one; `model.variant` picks TransMed's size.

Baselines (see baselines.py): `mrnet`, `late_fusion`, `cnn3d` (3D ResNet-10), `cnn3d_densenet121`.
"""

from __future__ import annotations

from functools import partial

from .baselines import CNN3D, LateFusion, MRNet
from .registry import register_model
from .transmed import TransMed

register_model(TransMed, "transmed")
for _variant in ("tiny", "small", "base"):
    register_model(partial(TransMed, variant=_variant), f"transmed_{_variant}")
register_model(LateFusion, "late_fusion")
register_model(MRNet, "mrnet")
register_model(partial(CNN3D, net="resnet10"), "cnn3d")
register_model(partial(CNN3D, net="densenet121", num_slices=32), "cnn3d_densenet121")  # five halvings: 32 slices reach the last pooling
