"""A `transmed export --format hub` folder back into a model, offline.

The folder is what a Hugging Face Hub model repository holds (`config.json`, `model.safetensors`,
`README.md`, the model card), so `huggingface_hub.snapshot_download("user/repo")` followed by
`transmed.load_model(folder)` works like `from_pretrained`. `config.json` carries the full
training config, so the model is rebuilt exactly as trained (backbone, slice grouping, modalities
dropped at inference); the weights are plain tensors (safetensors: no code runs on load).
"""

from __future__ import annotations

import json
from pathlib import Path

from torch import nn

from ..config import load_config
from ..core.errors import CheckpointError
from ..core.labels import LabelSpec
from .factory import build_model

HUB_FORMAT = "transmed-hub/1"
CONFIG_FILE, WEIGHTS_FILE, CARD_FILE = "config.json", "model.safetensors", "README.md"


def is_hub_folder(path: str | Path) -> bool:
    """A folder with a `config.json` or `model.safetensors`: to be read by `load_hub_folder` (which says what is wrong with it)."""
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


def load_hub_folder(folder: str | Path) -> nn.Module:
    """The model of a hub folder, in eval mode on the CPU; its `label_spec` attribute names the outputs."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from .loading import load_state

    config = read_hub_config(folder)
    spec = LabelSpec.from_dict(config["label_spec"])
    cfg = load_config(base=config["config"])
    weights = Path(folder) / WEIGHTS_FILE
    if not weights.is_file():
        raise CheckpointError(f"{folder} is not a complete TransMed hub folder: it has no {WEIGHTS_FILE}")
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError) as err:
        raise CheckpointError(f"cannot read {weights} (truncated or not safetensors): {err}") from None
    model = build_model(cfg, spec.num_outputs, pretrained=False)
    load_state(model, state, weights)
    model.label_spec = spec
    return model.eval()
