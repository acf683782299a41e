"""Self-describing checkpoints that hold plain data only, read with `torch.load(weights_only=True)`."""

from __future__ import annotations

import pickle
import random
import re
from pathlib import Path
from typing import Any, Optional

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


# torch's weights-only unpickler: the messages that mean "this pickle asks for code", not "this file is broken"
UNSAFE = r"GLOBAL (\S+) (?:was not an allowed|whose module)|unrecognized function|Can only create new object|Can only build"


def _unpickler_detail(err: BaseException) -> str:
    """The line of a torch.load failure that says what went wrong (torch prepends long advice)."""
    text = str(err)
    if "WeightsUnpickler error:" in text:
        text = text.split("WeightsUnpickler error:", 1)[1]
    line = next((line.strip() for line in text.splitlines() if line.strip()), type(err).__name__)
    return line.split(". ")[0].rstrip(".")[:160]


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """Loads with `weights_only=True`; a file that would execute code on load is refused (`UnsafeCheckpointError`),
    a missing, empty, corrupt or foreign file is a `CheckpointError`."""
    path = Path(path)
    if path.is_dir():
        inside = next((c for c in (path / "checkpoints" / "best.pt", path / "best.pt") if c.is_file()), None)
        hint = f"; did you mean {inside}?" if inside else "; give the .pt file (a run's checkpoints/best.pt)"
        raise CheckpointError(f"checkpoint {path} is a folder, not a checkpoint file{hint}")
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    if path.stat().st_size == 0:
        raise CheckpointError(f"checkpoint {path} is empty (0 bytes): an interrupted save or copy? Use another checkpoint")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # noqa: BLE001 - torch.load raises many types for a truncated or foreign file
        code = re.search(UNSAFE, str(err)) if isinstance(err, pickle.UnpicklingError) else None
        if code:  # a well-formed pickle that names code to run or objects to build: the one failure that is about safety
            what = f"call {code.group(1)}" if code.group(1) else "construct arbitrary objects"
            raise UnsafeCheckpointError(
                f"refusing to load {path}: unpickling it would {what}, which a plain-data TransMed checkpoint "
                f"never needs. Only load checkpoints written by TransMed or from sources you trust"
            ) from None
        raise CheckpointError(f"cannot read checkpoint {path} (corrupt, truncated or not a torch file): {_unpickler_detail(err)}") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        bare = isinstance(ckpt, dict) and ckpt and all(isinstance(v, torch.Tensor) for v in ckpt.values())
        what = "a bare state_dict (weights only)" if bare else f"a {type(ckpt).__name__} without the '{FORMAT}' marker"
        raise CheckpointError(
            f"{path} is not a TransMed checkpoint: it holds {what}; give a checkpoint written by `transmed train` "
            f"(runs/<run>/checkpoints/best.pt)"
        )
    return ckpt


def save_weights(state: dict, out: str | Path, config: dict, label_spec: dict, epoch: Optional[int]) -> Path:
    """Model weights as safetensors, with the config, label spec and epoch as JSON metadata (what `load_model` reads);
    written atomically, with the umask's mode."""
    import json

    from safetensors.torch import save

    metadata = {"format": FORMAT, "config": json.dumps(config), "label_spec": json.dumps(label_spec), "epoch": str(epoch)}
    data = save({k: v.contiguous() for k, v in state.items()}, metadata=metadata)
    atomic_write(out, lambda f: f.write(data))
    return Path(out)


def export_safetensors(checkpoint: str | Path, out: str | Path) -> Path:
    """Writes the checkpoint's model weights as safetensors, with its config as JSON metadata."""
    ckpt = load_checkpoint(checkpoint)
    return save_weights(ckpt["model"], out, ckpt["config"], ckpt["label_spec"], ckpt["epoch"])
