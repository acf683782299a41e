"""Config -> model: the one place that maps `model.*` keys to constructor arguments."""

from __future__ import annotations

from omegaconf import DictConfig
from torch import nn

from .registry import create_model


def model_kwargs(cfg: DictConfig, num_outputs: int) -> dict:
    m = cfg.model
    return dict(
        num_modalities=len(cfg.data.modalities),
        num_outputs=num_outputs,
        backbone=m.backbone,
        pretrained=m.pretrained,
        variant=m.variant,
        depth=m.depth,
        stem_stage=m.stem_stage,
        grid_size=m.grid_size,
        slice_window=m.slice_window,
        slice_stride=m.slice_stride,
        slice_mode=m.slice_mode,
        dropout=m.dropout,
        drop_path=m.drop_path,
    )


def build_model(cfg: DictConfig, num_outputs: int, pretrained: bool | None = None) -> nn.Module:
    """The model a config describes; `pretrained=False` skips weight loading (a checkpoint follows)."""
    kwargs = model_kwargs(cfg, num_outputs)
    if pretrained is False:
        kwargs["pretrained"] = False
    return create_model(cfg.model.name, **kwargs)
