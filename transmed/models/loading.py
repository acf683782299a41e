"""Trained models back from disk: a TransMed checkpoint, a `hub` export folder, a safetensors export.

`rebuild_model` is the one place that turns saved weights plus their config into a model, with the
same checks whatever the file: `transmed.load_model`, evaluation, prediction, explanation,
robustness, the experiments and the exports' checks all come through it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Optional, Sequence

import torch
from omegaconf import DictConfig
from torch import nn

from ..config import load_config
from ..core.checkpoint import load_checkpoint
from ..core.device import resolve_device
from ..core.errors import CheckpointError, ConfigError
from ..core.labels import LabelSpec
from .factory import build_model
from .hub_reader import is_hub_folder, read_hub_folder, read_weights_file


@dataclass
class Trained:
    """A model rebuilt from saved weights (eval mode), with the config it was trained with (plus overrides)."""

    model: nn.Module
    cfg: DictConfig
    spec: LabelSpec
    checkpoint: dict  # what was read: model, config, label_spec and, for a checkpoint, the rest

    def __iter__(self):  # model, cfg, spec, checkpoint = load_trained(...)
        return iter((self.model, self.cfg, self.spec, self.checkpoint))


def load_state(model: nn.Module, state: Mapping[str, torch.Tensor], source: str | Path) -> None:
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


def rebuild_model(
    saved: Mapping, source: str | Path, overrides: Sequence[str] = (), device: Optional[str | torch.device] = None
) -> Trained:
    """The model of saved weights: `saved` holds `model` (the state dict), `config` and `label_spec`.

    Every path checks the same: all three entries present; `overrides` keep the number of
    modalities the model was trained on; the config builds the model (`build_model` without any
    weights of its own); the weights fit it exactly. The model gets its `label_spec` and goes to
    `device` (default: the config's `train.device`) in eval mode.
    """
    for key in ("config", "label_spec", "model"):
        if key not in saved:
            raise CheckpointError(f"{source} has no '{key}' entry; it is not a complete TransMed training checkpoint or export")
    cfg = load_config(base=saved["config"], overrides=overrides)
    trained_on = list(saved["config"].get("data", {}).get("modalities", cfg.data.modalities))
    if len(trained_on) != len(cfg.data.modalities):
        raise ConfigError(
            f"invalid value for config key 'data.modalities': {list(cfg.data.modalities)}; the model of {source} was trained on "
            f"{len(trained_on)} modalities {trained_on} and takes those; to leave some out, use data.drop_modalities=[...]"
        )
    try:
        spec = LabelSpec.from_dict(saved["label_spec"])  # its temperature included: probabilities come out calibrated
    except CheckpointError as err:
        raise CheckpointError(f"{source}: {err}") from None
    model = build_model(cfg, spec.num_outputs, pretrained=False)
    load_state(model, saved["model"], source)
    model.label_spec = spec
    target = resolve_device(cfg.train.device) if device is None else torch.device(device)
    return Trained(model.to(target).eval(), cfg, spec, dict(saved))


def load_trained(checkpoint: str | Path, overrides: Sequence[str] = (), device: Optional[str | torch.device] = None) -> Trained:
    """A training checkpoint's model (eval mode; on `device`, default the config's `train.device`), config with
    `overrides`, label spec and the raw checkpoint dict."""
    return rebuild_model(load_checkpoint(checkpoint), checkpoint, overrides, device)


def load_hub_folder(folder: str | Path) -> nn.Module:
    """The model of a hub folder, in eval mode on the CPU; its `label_spec` attribute names the outputs."""
    return rebuild_model(read_hub_folder(folder), folder, device="cpu").model


def load_weights_file(path: str | Path) -> nn.Module:
    """The model of a safetensors export (its config and label spec in the metadata), in eval mode on the CPU."""
    return rebuild_model(read_weights_file(path), path, device="cpu").model


def load_model(path: str | Path, map_location: str | torch.device = "cpu") -> nn.Module:
    """A trained model in eval mode from a TransMed checkpoint or a `transmed export --format hub` folder."""
    if is_hub_folder(path):
        return load_hub_folder(path).to(map_location)
    return load_trained(path, device=map_location).model
