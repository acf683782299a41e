"""Prediction for new studies: one input per modality, the evaluation preprocessing, probabilities as JSON."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Optional, Sequence

import torch
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader

from ..core.device import resolve_device
from ..core.errors import DataError, UsageError
from ..core.labels import LabelSpec
from ..data import build_dataset, build_loader
from ..engine.inference import predict
from ..models.loading import load_trained


def study_loader(cfg: DictConfig, items: list[dict]) -> DataLoader:
    """A loader over study dicts (`id` plus one path per modality) with exactly evaluation's preprocessing.

    It goes through `build_dataset`/`build_loader` as evaluation does, with the on-disk cache off (a
    new study's file may change under the same path) and read errors raised, never skipped.
    """
    cfg = OmegaConf.merge(cfg, {"data": {"cache_dir": None, "on_error": "raise"}})
    return build_loader(cfg, build_dataset(cfg, "predict", train=False, manifest=items, show_progress=False), train=False)


def study_item(cfg: DictConfig, inputs: Sequence[str | Path] | Mapping[str, str | Path], study_id: Optional[str] = None) -> dict:
    """`{id, modality: path}` for inputs named by modality (`{"T1": path, ...}`, any order) or given
    in the config's modality order; checks names, count and existence, and refuses a positional file
    named after another modality (`T2.nii.gz` in T1's place).

    `study_id` defaults to the first modality's file name without its extensions (`0200.npy` -> 0200),
    or to its folder's name when the file is named after the modality (`P001/T1.nii.gz` -> P001).
    """
    modalities = list(cfg.data.modalities)
    if isinstance(inputs, Mapping):
        unknown = [name for name in inputs if name not in modalities]
        if unknown:
            raise UsageError(f"unknown modality {unknown[0]!r} in {unknown[0]}=PATH; this model takes {', '.join(modalities)}")
        missing = [m for m in modalities if m not in inputs]
        if missing:
            raise UsageError(f"no input for modality {missing[0]!r}; give one per modality: {' '.join(f'{m}=PATH' for m in modalities)}")
        paths = [inputs[m] for m in modalities]
    else:
        paths = list(inputs)
        if len(paths) != len(modalities):
            raise DataError(
                f"expected {len(modalities)} inputs, one per modality in the order {modalities}; got {len(paths)}: {[str(p) for p in paths]}"
            )
        by_name = {m.lower(): m for m in modalities}
        for modality, path in zip(modalities, paths):
            named_after = by_name.get(Path(path).name.split(".")[0].lower(), modality)
            if named_after != modality:  # P003/T2.nii.gz given in T1's place
                raise UsageError(
                    f"{path} is given as {modality} but is named after {named_after}; positional inputs follow the order "
                    f"{', '.join(modalities)}; name them to be sure: {' '.join(f'{m}=PATH' for m in modalities)}"
                )
    for modality, path in zip(modalities, paths):
        if not Path(path).exists():
            raise DataError(f"{modality} input not found: {path}; give one file or DICOM folder per modality, in the order {modalities}")
    first = Path(paths[0]).absolute()
    stem = first.name.split(".")[0]
    sid = study_id or (first.parent.name if stem.lower() in {m.lower() for m in modalities} else stem)
    return {"id": sid, **{m: str(p) for m, p in zip(modalities, paths)}}


def study_probabilities(model: torch.nn.Module, cfg: DictConfig, spec: LabelSpec, item: dict) -> dict[str, float]:
    """Probability per task (multilabel) or class (multiclass) for one study dict."""
    preds = predict(model, study_loader(cfg, [item]), spec, resolve_device(cfg.train.device), cfg.train.amp, desc=None)  # one study: no bar
    return {name: float(p) for name, p in zip(spec.names, preds.probs[0])}


def prediction_of(probabilities: dict[str, float], spec: LabelSpec, threshold: float = 0.5) -> dict | str:
    """Multilabel: `{task: prob >= threshold}`; multiclass: the most probable class name."""
    if spec.kind == "multilabel":
        return {name: p >= threshold for name, p in probabilities.items()}
    return max(probabilities, key=probabilities.get)


def predict_study(
    checkpoint: str | Path,
    inputs: Sequence[str | Path] | Mapping[str, str | Path],
    overrides: Sequence[str] = (),
    study_id: Optional[str] = None,
    threshold: float = 0.5,
) -> dict:
    """`{"id", "probabilities": {name: p}, "prediction", "threshold"?, "inputs"}` for one study of a checkpoint.

    `inputs`: `{modality: path}`, or paths in the config's modality order. Probabilities equal
    evaluate.py's for the same files. The threshold (0.5 by default) applies to multilabel tasks
    only; multiclass predictions are the argmax. `inputs` in the result says which file was read as
    which modality.
    """
    model, cfg, spec, _ = load_trained(checkpoint, overrides)
    return predict_loaded(model, cfg, spec, inputs, study_id, threshold)


def predict_loaded(
    model: torch.nn.Module,
    cfg: DictConfig,
    spec: LabelSpec,
    inputs: Sequence[str | Path] | Mapping[str, str | Path],
    study_id: Optional[str] = None,
    threshold: float = 0.5,
) -> dict:
    """`predict_study` for a model already loaded (a checkpoint's, or an ONNX file's with the config of its metadata)."""
    item = study_item(cfg, inputs, study_id)
    if cfg.data.format in ("mrnet", "synthetic"):  # the MRNet pipeline neither reorients nor resamples: only its own stacks fit
        for modality in cfg.data.modalities:
            if not item[modality].lower().endswith(".npy"):
                raise DataError(
                    f"{modality} input {item[modality]}: this model was trained on MRNet-layout data (data.format="
                    f"{cfg.data.format}) and reads .npy slice stacks (s, H, W) only; convert the series to .npy"
                )
    probabilities = study_probabilities(model, cfg, spec, item)
    result: dict = {"id": item["id"], "probabilities": probabilities, "prediction": prediction_of(probabilities, spec, threshold)}
    if spec.kind == "multilabel":
        result["threshold"] = threshold
    result["inputs"] = {m: item[m] for m in cfg.data.modalities}
    return result
