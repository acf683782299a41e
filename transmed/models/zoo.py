"""Registered model names. `model.name` in a config picks one; `model.variant` picks TransMed's size.

Baselines (see baselines.py): `mrnet`, `late_fusion`, `cnn3d` (3D ResNet-10), `cnn3d_densenet121`.
"""

from __future__ import annotations

from .baselines import CNN3D, LateFusion, MRNet
from .registry import register_model
from .transmed import TransMed

register_model(TransMed, "transmed")
for _variant in ("tiny", "small", "base"):
    register_model(TransMed, f"transmed_{_variant}", variant=_variant)
register_model(LateFusion, "late_fusion")
register_model(MRNet, "mrnet")
register_model(CNN3D, "cnn3d", net="resnet10")
register_model(CNN3D, "cnn3d_densenet121", net="densenet121", num_slices=32)  # five halvings: 32 slices reach the last pooling
