"""Self-describing checkpoints that hold plain data only, read with `torch.load(weights_only=True)`."""

from __future__ import annotations

import pickle
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .errors import CheckpointError, UnsafeCheckpointError
from .io import atomic_write

FORMAT = "transmed-checkpoint/1"


def rng_state() -> dict:
    """Python, NumPy and torch (CPU and CUDA) generator states as tensors and plain values."""
    np_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {
            "keys": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def save_checkpoint(path: str | Path, **content: Any) -> None:
    """Atomically writes `{format, **content}`; content must be tensors and plain Python values."""
    atomic_write(path, lambda f: torch.save({"format": FORMAT, **content}, f))


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """Loads with `weights_only=True`; a file that would execute code on load is refused."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        raise UnsafeCheckpointError(
            f"refusing to load {path}: it is not a plain-data checkpoint (unpickling it would run code "
            f"or construct arbitrary objects). Only load checkpoints written by TransMed or from sources "
            f"you trust. Detail: {str(err).splitlines()[0]}"
        ) from None
    except (RuntimeError, EOFError) as err:
        raise CheckpointError(f"cannot read checkpoint {path} (truncated or not a torch file): {err}") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a TransMed checkpoint (no '{FORMAT}' marker)")
    return ckpt


def export_safetensors(checkpoint: str | Path, out: str | Path) -> Path:
    """Writes the checkpoint's model weights as safetensors, with its config as JSON metadata."""
    import json

    from safetensors.torch import save_file

    ckpt = load_checkpoint(checkpoint)
    metadata = {
        "format": FORMAT,
        "config": json.dumps(ckpt["config"]),
        "label_spec": json.dumps(ckpt["label_spec"]),
        "epoch": str(ckpt["epoch"]),
    }
    out = Path(out)
    save_file({k: v.contiguous() for k, v in ckpt["model"].items()}, str(out), metadata=metadata)
    return out
