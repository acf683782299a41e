"""Trained models back from disk: a TransMed checkpoint, or a `hub` export folder.

The one place that turns saved weights plus their config into a model; `transmed.load_model`,
evaluation, prediction, explanation, robustness and the experiments all come through here.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import torch
from omegaconf import DictConfig
from torch import nn

from ..config import load_config
from ..core.checkpoint import load_checkpoint
from ..core.device import resolve_device
from ..core.errors import CheckpointError, ConfigError
from ..core.labels import LabelSpec
from .factory import build_model


@dataclass
class Trained:
    """A model rebuilt from a checkpoint (eval mode), with the config it was trained with (plus overrides)."""

    model: nn.Module
    cfg: DictConfig
    spec: LabelSpec
    checkpoint: dict

    def __iter__(self):  # model, cfg, spec, checkpoint = load_trained(...)
        return iter((self.model, self.cfg, self.spec, self.checkpoint))


def load_state(model: nn.Module, state: dict, source: str | Path) -> None:
    """`load_state_dict`, with a mismatch reported as one line naming the file and the first differing tensor."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [k for k in own if k in state and tuple(own[k].shape) != tuple(state[k].shape)]
    if missing or unexpected or shapes:
        if shapes:
            k = shapes[0]
            what = f"tensor {k} has shape {tuple(state[k].shape)}, the model built from its config expects {tuple(own[k].shape)}"
        elif missing:
            what = f"{len(missing)} tensors are missing (first: {missing[0]})"
        else:
            what = f"{len(unexpected)} tensors are unknown to the model (first: {unexpected[0]})"
        raise CheckpointError(f"{source}: the weights do not fit the model its config describes: {what}")
    model.load_state_dict(state)


def load_trained(
    checkpoint: str | Path, overrides: Sequence[str] = (), device: Optional[str | torch.device] = None
) -> Trained:
    """Model (eval mode; on `device`, default the config's `train.device`), config with `overrides`,
    label spec and the raw checkpoint dict."""
    ckpt = load_checkpoint(checkpoint)
    for key in ("config", "label_spec", "model"):
        if key not in ckpt:
            raise CheckpointError(f"{checkpoint} has no '{key}' entry; it is not a complete TransMed training checkpoint")
    cfg = load_config(base=ckpt["config"], overrides=overrides)
    trained_on = list(ckpt["config"].get("data", {}).get("modalities", cfg.data.modalities))
    if len(trained_on) != len(cfg.data.modalities):
        raise ConfigError(
            f"invalid value for config key 'data.modalities': {list(cfg.data.modalities)}; the model of {checkpoint} was trained on "
            f"{len(trained_on)} modalities {trained_on} and takes those; to leave some out, use data.drop_modalities=[...]"
        )
    spec = LabelSpec.from_dict(ckpt["label_spec"])
    model = build_model(cfg, spec.num_outputs, pretrained=False)
    load_state(model, ckpt["model"], checkpoint)
    target = resolve_device(cfg.train.device) if device is None else torch.device(device)
    return Trained(model.to(target).eval(), cfg, spec, ckpt)


def load_model(path: str | Path, map_location: str | torch.device = "cpu") -> nn.Module:
    """A trained model in eval mode from a TransMed checkpoint or a `transmed export --format hub` folder."""
    from .hub_reader import is_hub_folder, load_hub_folder  # noqa: PLC0415  (the hub reader needs huggingface_hub)

    if is_hub_folder(path):
        return load_hub_folder(path).to(map_location).eval()
    return load_trained(path, device=map_location).model
