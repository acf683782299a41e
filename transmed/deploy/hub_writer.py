"""A Hugging Face Hub style folder: config.json, model.safetensors and README.md (the model card).

Upload it as a model repository (`huggingface_hub.upload_folder`); read it back, offline, with
`transmed.load_model(folder)` (transmed/models/hub_reader.py).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

from omegaconf import DictConfig

from ..config import to_dict
from ..core.checkpoint import save_weights
from ..core.labels import LabelSpec
from ..models.factory import model_kwargs
from ..models.hub_reader import CARD_FILE, CONFIG_FILE, HUB_FORMAT, WEIGHTS_FILE, is_hub_folder
from .common import input_geometry

__all__ = ["hub_config", "write_hub_folder", "is_hub_folder"]


def hub_config(cfg: DictConfig, spec: LabelSpec, epoch: Optional[int]) -> dict:
    """config.json: what the model predicts and takes, its constructor arguments, and the full training config."""
    from ..core import __version__

    kwargs = {k: v for k, v in model_kwargs(cfg, spec.num_outputs).items() if k != "pretrained"}
    return {
        "format": HUB_FORMAT,
        "library_name": "transmed",
        "transmed_version": __version__,
        "model_name": cfg.model.name,
        "model_kwargs": kwargs,
        "label_spec": spec.to_dict(),
        "input": {
            **input_geometry(cfg),
            "x": "(batch, modality, slice, height, width) float32 in [0, 1]",
            "mask": "(batch, modality, slice) bool, True for real slices",
            "output": "logits (batch, outputs); " + ("sigmoid per task" if spec.kind == "multilabel" else "softmax over classes"),
        },
        "epoch": epoch,
        "config": to_dict(cfg),
    }


def write_hub_folder(folder: Path, cfg: DictConfig, spec: LabelSpec, state: dict, card: str, epoch: Optional[int]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    config = hub_config(cfg, spec, epoch)
    (folder / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
    save_weights(state, folder / WEIGHTS_FILE, config["config"], config["label_spec"], epoch)
    (folder / CARD_FILE).write_text(card)
