"""An exported ONNX file used on its own: `transmed predict --checkpoint model.onnx T1=... T2=...`.

Everything besides the graph comes from the file's `metadata_props` (`describe.py`): the label
names and task kind, the modality order, and the preprocessing settings, from which the same
MONAI pipeline as evaluation's is rebuilt. No checkpoint is read.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from omegaconf import DictConfig
from torch import nn

from ..core.errors import CheckpointError, UsageError
from ..core.labels import LabelSpec
from .common import require_slices
from .describe import config_from_description, label_spec_of, read_onnx_description


def is_onnx(path: str | Path) -> bool:
    return Path(path).suffix.lower() == ".onnx"


class OnnxModel(nn.Module):
    """`forward(x, mask) -> logits` through ONNX Runtime on the CPU; refuses fewer than `min_slices` slices.

    The temperature of the metadata is in the label spec `load_onnx` returns, which turns logits into probabilities."""

    def __init__(self, path: Path, min_slices: int) -> None:
        super().__init__()
        import onnxruntime as ort

        self.path, self.min_slices = path, min_slices
        try:
            self.session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        except Exception as err:  # noqa: BLE001 - ONNX Runtime raises its own types for a bad file
            raise CheckpointError(f"{path}: ONNX Runtime cannot load it: {str(err).strip().splitlines()[0]}") from None

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        require_slices(x, self.min_slices, f"the input of {self.path.name}")
        feed = {"x": x.detach().cpu().numpy().astype(np.float32), "mask": mask.detach().cpu().numpy().astype(bool)}
        return torch.from_numpy(self.session.run(["logits"], feed)[0])


def load_onnx(path: str | Path, overrides: Sequence[str] = ()) -> tuple[OnnxModel, DictConfig, LabelSpec]:
    """The model, a config holding its preprocessing (plus `overrides`) and its label spec, from the ONNX file alone."""
    missing = [name for name in ("onnx", "onnxruntime") if importlib.util.find_spec(name) is None]
    if missing:
        raise UsageError(f"reading {path} needs {' and '.join(missing)}: pip install 'transmed[export]'")
    import onnx

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"ONNX file not found: {path}")
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as err:  # noqa: BLE001 - protobuf and onnx raise several types for a bad file
        raise CheckpointError(f"{path} is not a readable ONNX file: {str(err).strip().splitlines()[0]}") from None
    description = read_onnx_description({p.key: p.value for p in proto.metadata_props}, str(path))
    cfg = config_from_description(description, ["train.device=cpu", *overrides])
    try:
        spec = label_spec_of(description)
    except CheckpointError as err:
        raise CheckpointError(f"{path}: {err}") from None
    return OnnxModel(path, description["min_slices"]), cfg, spec
