"""What every export format shares: the deployable forward, parity inputs and checks, safe output paths."""

from __future__ import annotations

import contextlib
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
from omegaconf import DictConfig
from torch import nn

from ..config import min_slices_for
from ..core.errors import DataError, ResultExistsError, TransMedError
from ..models.transmed import TransMed

TOLERANCE = 1e-4  # largest |logit difference| an exported model may show against PyTorch
BATCH_SIZES = (1, 3)


class ExportError(TransMedError, RuntimeError):
    """An export that cannot be made, or whose result does not reproduce the PyTorch model."""


class TooFewSlicesError(DataError):
    """A stack with fewer slices than one slice group: an exported graph would run on it silently."""


def require_slices(x: torch.Tensor | np.ndarray, min_slices: int, what: str = "the input") -> None:
    """Refuses `x` (B, M, S, H, W) with S < `min_slices`, as the data pipeline refuses such stacks."""
    slices = x.shape[2]
    if slices < min_slices:
        raise TooFewSlicesError(
            f"{what} has {slices} slices, fewer than the {min_slices} this model needs (one slice group); "
            "pad shorter stacks with masked slices, as the data pipeline does"
        )


@dataclass
class ExportReport:
    """What an export wrote and how closely it reproduces the PyTorch model."""

    format: str
    path: Path
    files: dict[str, int] = field(default_factory=dict)  # file (relative to `path` for folders) -> bytes
    parity: list[dict] = field(default_factory=list)  # {"batch", "slices", "max_abs_diff"} per checked input
    notes: list[str] = field(default_factory=list)

    @property
    def max_abs_diff(self) -> float | None:
        return max((p["max_abs_diff"] for p in self.parity), default=None)

    def summary(self) -> str:
        lines = [f"{self.format}: wrote {self.path}"]
        lines += [f"  {name}  {_size(size)}" for name, size in self.files.items()]
        if self.parity:
            batches = sorted({p["batch"] for p in self.parity})
            slices = sorted({p["slices"] for p in self.parity})
            lines.append(
                f"  parity with PyTorch: largest |logit difference| {self.max_abs_diff:.2e} (tolerance {TOLERANCE:g}) "
                f"over batch sizes {', '.join(map(str, batches))} x slice counts {', '.join(map(str, slices))}"
            )
        lines += [f"  {note}" for note in self.notes]
        return "\n".join(lines)


def _size(n: int) -> str:
    return f"{n / 2**20:.2f} MiB" if n >= 2**20 else f"{n / 2**10:.1f} KiB"


class Deployable(nn.Module):
    """`forward(x, mask) -> logits` with both inputs required: the signature an exported graph gets.

    x: (B, M, S, H, W) float32 in [0, 1]; mask: (B, M, S) bool, True for real slices (a missing
    modality: all False). The wrapped model's forward hooks (e.g. `data.drop_modalities`) run inside.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.model(x, mask)


class NanPadded(nn.Module):
    """`forward(image) -> logits` with one input: slices that are NaN throughout are padding (mask False).

    The MONAI bundle's network: MONAI's tools call a network with one image tensor. A study whose
    modalities have different slice counts is padded with NaN slices, a missing modality is NaN
    throughout; real slices never hold NaN (the data pipeline refuses non-finite voxels).
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        padding = torch.isnan(image)
        mask = ~padding.flatten(3).all(dim=-1)
        return self.model(torch.where(padding, torch.zeros_like(image), image), mask)


def nan_padded(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """`NanPadded`'s input for (x, mask): the slices the mask marks as padding set to NaN."""
    return x.masked_fill(~mask[..., None, None], float("nan"))


def require_transmed(model: nn.Module, fmt: str) -> None:
    """Graph exports need TransMed's dense forward; the baselines skip padded slices with data-dependent shapes."""
    if not any(isinstance(m, TransMed) for m in model.modules()):
        raise ExportError(
            f"--format {fmt} needs a TransMed model (its forward has an export mode); this checkpoint holds "
            f"{type(model).__name__}. Export its weights with --format safetensors or hub instead."
        )


@contextlib.contextmanager
def export_mode(model: nn.Module) -> Iterator[nn.Module]:
    """The dense forward on every TransMed inside `model` (no data-dependent shapes), in eval mode; restored after."""
    modules = [m for m in model.modules() if isinstance(m, TransMed)]
    saved = [(m, m.export_mode) for m in modules]
    training = model.training
    try:
        for m in modules:
            m.export_mode = True
        yield model.eval()
    finally:
        for m, value in saved:
            m.export_mode = value
        model.train(training)


def input_geometry(cfg: DictConfig) -> dict:
    """Modalities, image size and the fewest slices a stack may have (what the data pipeline pads to)."""
    return {
        "modalities": list(cfg.data.modalities),
        "image_size": int(cfg.data.image_size),
        "min_slices": min_slices_for(cfg.model.slice_mode, cfg.model.slice_window),
    }


def parity_inputs(cfg: DictConfig, batch_sizes: Sequence[int] = BATCH_SIZES, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Inputs at three slice counts and each batch size; in batches of more than one, one study has
    fewer real slices per modality (padding) and one lacks its last modality (mask all False)."""
    geo = input_geometry(cfg)
    m, size, low = len(geo["modalities"]), geo["image_size"], geo["min_slices"]
    generator = torch.Generator().manual_seed(seed)
    out = []
    for slices in (low, low + 3, 2 * low + 3):
        for b in batch_sizes:
            x = torch.rand(b, m, slices, size, size, generator=generator)
            mask = torch.ones(b, m, slices, dtype=torch.bool)
            if b > 1:
                for k in range(m):
                    mask[1, k, max(low, slices - 1 - k) :] = False
            if b > 2 and m > 1:
                mask[2, -1] = False
                mask[2, 0, max(low, slices - 2) :] = False
            out.append((x, mask))
    return out


def check_parity(
    reference: nn.Module,
    run: Callable[[torch.Tensor, torch.Tensor], torch.Tensor | np.ndarray],
    inputs: Sequence[tuple[torch.Tensor, torch.Tensor]],
) -> list[dict]:
    """`run(x, mask)` against `reference(x, mask)` (eager PyTorch, eval mode) on each input; raises ExportError over TOLERANCE."""
    device = next(reference.parameters()).device
    results = []
    for x, mask in inputs:
        with torch.no_grad():
            expected = reference(x.to(device), mask.to(device)).float().cpu()
            got = run(x, mask)
        got = torch.as_tensor(got.detach().cpu().numpy() if torch.is_tensor(got) else np.asarray(got)).float()
        if got.shape != expected.shape:
            raise ExportError(
                f"the exported model returns shape {tuple(got.shape)} for input {tuple(x.shape)}, PyTorch {tuple(expected.shape)}"
            )
        diff = float((got - expected).abs().max())
        results.append({"batch": x.shape[0], "slices": x.shape[2], "max_abs_diff": diff})
        if not diff <= TOLERANCE:
            raise ExportError(
                f"the exported model differs from PyTorch by {diff:.3g} (> {TOLERANCE:g}) on input {tuple(x.shape)}; "
                f"nothing was kept. Please report this with the checkpoint's config."
            )
    return results


def check_output(out: Path, overwrite: bool, previous: Callable[[Path], bool] | None = None) -> None:
    """Refuses to replace an existing output unless asked (`overwrite`).

    Folder formats give `previous`, which tells an earlier export of theirs: only such a folder (or
    an empty one) is replaced, never a folder of other files, even with `overwrite`.
    """
    if not out.exists() and not out.is_symlink():
        return
    folder = previous is not None
    if folder and not out.is_dir():
        raise ResultExistsError(f"{out} exists and is not a folder; choose another --out")
    if not folder and out.is_dir():
        raise ResultExistsError(f"{out} is a folder; give a file name for --out")
    if folder and not any(out.iterdir()):
        return
    if not overwrite:
        raise ResultExistsError(f"{out} already exists; choose another --out, or pass --overwrite to replace it")
    if folder and not previous(out):
        raise ResultExistsError(f"{out} holds other files, not an earlier export of this format; it is not replaced. Choose another --out")


@contextlib.contextmanager
def staged(out: Path, overwrite: bool) -> Iterator[Path]:
    """A temporary sibling of `out` to write into; it replaces `out` only when the block succeeds (and checks pass)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".partial-{out.name}"  # keeps the suffix, which some writers look at
    if tmp.exists():
        shutil.rmtree(tmp) if tmp.is_dir() else tmp.unlink()
    try:
        yield tmp
        if out.exists() and overwrite:
            shutil.rmtree(out) if out.is_dir() else out.unlink()
        elif out.is_dir():  # an empty folder
            out.rmdir()
        tmp.replace(out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp) if tmp.is_dir() else tmp.unlink()


def file_sizes(path: Path, name: str) -> dict[str, int]:
    """Bytes per file: `{name: size}` for a file, else per file below the folder (relative paths)."""
    if path.is_file():
        return {name: path.stat().st_size}
    return {str(p.relative_to(path)): p.stat().st_size for p in sorted(path.rglob("*")) if p.is_file()}
