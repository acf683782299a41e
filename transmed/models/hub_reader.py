"""Reading a `transmed export --format hub` folder and a weights file with its config, offline.

The folder is what a Hugging Face Hub model repository holds (`config.json`, `model.safetensors`,
`README.md`, the model card), so `huggingface_hub.snapshot_download("user/repo")` followed by
`transmed.load_model(folder)` works like `from_pretrained`. `config.json` carries the full
training config, so the model is rebuilt exactly as trained (`loading.rebuild_model`); the weights
are plain tensors (safetensors: no code runs on load). This module only reads files: it builds no model.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..core.errors import CheckpointError

HUB_FORMAT = "transmed-hub/1"
CONFIG_FILE, WEIGHTS_FILE, CARD_FILE = "config.json", "model.safetensors", "README.md"


def is_hub_folder(path: str | Path) -> bool:
    """A folder with a `config.json` or `model.safetensors`: to be read by `read_hub_folder` (which says what is wrong with it)."""
    path = Path(path)
    return path.is_dir() and any((path / name).is_file() for name in (CONFIG_FILE, WEIGHTS_FILE))


def read_hub_config(folder: str | Path) -> dict:
    """The folder's `config.json`, checked to be a TransMed hub export."""
    path = Path(folder) / CONFIG_FILE
    if not path.is_file():
        raise CheckpointError(f"{folder} is not a TransMed hub folder: it has no {CONFIG_FILE}")
    try:
        config = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise CheckpointError(f"cannot read {path}: {err}") from None
    if not isinstance(config, dict) or config.get("format") != HUB_FORMAT:
        raise CheckpointError(f"{path} is not a TransMed hub config (no '{HUB_FORMAT}' format marker)")
    return config


def read_weights(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """A safetensors file (`core.checkpoint.save_weights`): its tensors and its string metadata."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return {key: f.get_tensor(key) for key in f.keys()}, dict(f.metadata() or {})
    except (SafetensorError, OSError) as err:
        raise CheckpointError(f"cannot read {path} (truncated or not safetensors): {err}") from None


def read_weights_file(path: str | Path) -> dict:
    """A safetensors export (`transmed export --format safetensors`) as a checkpoint-like dict: model, config, label_spec."""
    state, metadata = read_weights(path)
    saved = {"model": state}
    for key in ("config", "label_spec"):
        if key in metadata:
            try:
                saved[key] = json.loads(metadata[key])
            except json.JSONDecodeError as err:
                raise CheckpointError(f"{path}: its '{key}' metadata is not JSON: {err}") from None
    return saved


def read_hub_folder(folder: str | Path) -> dict:
    """A hub folder as a checkpoint-like dict: model (its weights), config and label_spec (from `config.json`)."""
    config = read_hub_config(folder)
    weights = Path(folder) / WEIGHTS_FILE
    if not weights.is_file():
        raise CheckpointError(f"{folder} is not a complete TransMed hub folder: it has no {WEIGHTS_FILE}")
    state, _ = read_weights(weights)
    return {key: config[key] for key in ("config", "label_spec") if key in config} | {"model": state}
