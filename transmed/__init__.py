"""TransMed: multi-modal MRI classification with a CNN stem and transformer fusion."""

from __future__ import annotations

from pathlib import Path

import torch

from .models import TransMed, build_model, create_model, list_models

__all__ = ["TransMed", "create_model", "list_models", "load_model"]
__version__ = "0.1.0"


def load_model(checkpoint: str | Path, map_location: str | torch.device = "cpu") -> torch.nn.Module:
    """Rebuilds a trained model from a TransMed checkpoint (safe load), in eval mode."""
    from .config import load_config
    from .engine.checkpoint import load_checkpoint

    ckpt = load_checkpoint(checkpoint, map_location=map_location)
    cfg = load_config(base=ckpt["config"])
    model = build_model(cfg, len(ckpt["label_spec"]["names"]), pretrained=False)
    model.load_state_dict(ckpt["model"])
    return model.eval()
