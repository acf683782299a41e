"""What a TransMed MONAI bundle needs beyond stock MONAI transforms: TransMed's stack checks (slice
count, one finite, non-constant volume), stacking the modalities into one NaN-padded image, and the
inference loop that writes the probabilities.

`python -m monai.bundle run` puts the bundle folder on `sys.path` before its `run` step, so
configs/inference.json names these as `scripts.standalone.*`. Only MONAI, torch and numpy are imported.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Hashable, Mapping, Sequence

import torch
from monai.transforms import MapTransform


class StackError(ValueError):
    """A stack the model cannot use (too few slices, not 3D, non-finite or constant voxels)."""


class CheckStacksd(MapTransform):
    """TransMed's checks on channel-first stacks: one 3D volume, at least `min_slices` along `slice_dim`,
    finite voxels, not constant. `when` is added to the reasons (for the check after resampling)."""

    def __init__(self, keys: Sequence[str], min_slices: int, slice_dim: int = 1, when: str = "") -> None:
        super().__init__(keys)
        self.min_slices, self.slice_dim = min_slices, slice_dim
        self.when = f" {when}" if when else ""

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            stack, when = torch.as_tensor(d[key]), self.when
            if stack.dim() != 4 or stack.shape[0] != 1:
                raise StackError(f"{key} is not one 3D volume (shape {tuple(stack.shape)}){when}")
            if stack.shape[self.slice_dim] < self.min_slices:
                slices = stack.shape[self.slice_dim]
                raise StackError(f"{key} has {slices} slices{when}, fewer than the {self.min_slices} the model needs (one slice group)")
            if not torch.isfinite(stack).all():
                raise StackError(f"{key} holds {int((~torch.isfinite(stack)).sum())} NaN or Inf voxels{when}")
            if stack.amax() == stack.amin():
                raise StackError(f"{key} is a constant volume (every voxel {float(stack.amax()):g}){when}")
        return d


class StackModalitiesd(MapTransform):
    """(1, S_m, H, W) per modality -> `image` (M, S_max, H, W): shorter stacks padded with NaN slices,
    which the network reads as padding (its mask)."""

    def __init__(self, keys: Sequence[str], name: str = "image") -> None:
        super().__init__(keys)
        self.name = name

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        stacks = [torch.as_tensor(d[key]).squeeze(0) for key in self.keys]
        slices = max(s.shape[0] for s in stacks)
        image = torch.full((len(stacks), slices, *stacks[0].shape[1:]), float("nan"), dtype=torch.float32)
        for index, stack in enumerate(stacks):
            image[index, : stack.shape[0]] = stack
        d[self.name] = image
        return d


def study_id(study: Mapping, modalities: Sequence[str]) -> str:
    """The study's `id`, else the first file's name without extensions, or its folder's name when
    the file is named after the modality (`P001/T1.nii.gz` -> P001), as `transmed predict` names it."""
    if study.get("id"):
        return str(study["id"])
    first = Path(str(study[modalities[0]])).absolute()
    stem = first.name.split(".")[0]
    return first.parent.name if stem.lower() in {m.lower() for m in modalities} else stem


def _check_inputs(study: Mapping, modalities: Sequence[str]) -> None:
    for modality in modalities:
        path = study.get(modality)
        if not path:
            example = " ".join(f"--study#{m} PATH" for m in modalities)
            raise SystemExit(f"error: no {modality} file given; the model takes {', '.join(modalities)}: {example}")
        if not Path(str(path)).exists():
            raise SystemExit(f"error: {modality} file not found: {path}")


def _stack_error(err: BaseException) -> StackError | None:
    """MONAI wraps a transform's error in RuntimeErrors; the stack check's own error, if it is the cause."""
    while err is not None and not isinstance(err, StackError):
        err = err.__cause__
    return err


def predict(
    network: torch.nn.Module,
    dataset,
    modalities: Sequence[str],
    label_names: Sequence[str],
    task: str,
    temperature: float | Sequence[float],
    output_file: str,
    device: torch.device | str = "cpu",
) -> list[dict]:
    """Probabilities for every study of `dataset` (its `data`: dicts with one file per modality), written to `output_file` as JSON.

    Multilabel: sigmoid per task; multiclass: softmax over the classes; both of logits / temperature
    (one per task, or one for all classes: the checkpoint's temperature scaling).
    A bad request (a missing file, a stack the checks refuse) ends the run with one `error: ...` line.
    """
    results = []
    for index, study in enumerate(dataset.data):
        _check_inputs(study, modalities)
        try:
            item = dataset[index]
        except Exception as err:  # noqa: BLE001 - only the stack checks are the user's to fix; the rest keeps its traceback
            found = _stack_error(err)
            if found is None:
                raise
            raise SystemExit(f"error: study {study_id(study, modalities)}: {found}") from None
        with torch.no_grad():
            logits = network(item["image"][None].to(device)).float().cpu() / torch.as_tensor(temperature, dtype=torch.float32)
        probs = torch.sigmoid(logits) if task == "multilabel" else torch.softmax(logits, dim=-1)
        results.append(
            {
                "id": study_id(study, modalities),
                "probabilities": dict(zip(label_names, probs[0].tolist())),
                "inputs": {m: str(study[m]) for m in modalities},
            }
        )
    out = Path(output_file)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {out}: probabilities of {len(results)} stud{'y' if len(results) == 1 else 'ies'}")
    return results
