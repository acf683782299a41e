"""What a deployed model must carry to be used without its checkpoint: labels, inputs, preprocessing.

`describe` is the one place that gathers it; the ONNX file's `metadata_props`
(`onnx_metadata_props`), the MONAI bundle (its metadata.json and the transforms of its
inference.json) and `transmed predict` on an ONNX file (`config_from_description`) all read it.
Add a field here and every format carries it.
"""

from __future__ import annotations

import json
from typing import Mapping, Optional, Sequence

from omegaconf import DictConfig, OmegaConf

from ..config import load_config, min_slices_for
from ..core.errors import CheckpointError
from ..core.labels import LabelSpec
from ..data.datasets import cache_dtype
from ..data.nifti import PERCENTILES

# The data and model keys the preprocessing depends on: enough to rebuild it with `config_from_description`.
PREPROCESSING_KEYS = {
    "data": ("format", "modalities", "image_size", "num_slices", "cache_dtype", "spacing", "slice_axis"),
    "model": ("slice_mode", "slice_window"),
}
JSON_FIELDS = ("label_names", "modalities", "preprocessing", "temperature")  # stored as JSON text in ONNX metadata_props
NUMBER_FIELDS = {"image_size": int, "min_slices": int}


def preprocessing_description(cfg: DictConfig) -> dict:
    """The deterministic pipeline of `cfg` (`data.datasets.preprocessing` plus the stored type), in words and settings."""
    d = cfg.data
    fmt = "mrnet" if d.format == "synthetic" else d.format
    size = int(d.image_size)
    stored = str(cache_dtype(cfg)).removeprefix("torch.")
    slices = f"resampled to {d.num_slices} slices" if d.num_slices else "kept as read"
    if fmt == "nifti":
        grid = "the first modality's grid" + (f", resampled to {list(d.spacing)} mm voxels" if d.spacing else "")
        described = {
            "reader": "one NIfTI file (or DICOM series folder) per modality",
            "orientation": "RAS",
            "intensity": {"method": "percentiles", "lower": PERCENTILES[0], "upper": PERCENTILES[1], "range": [0.0, 1.0], "clip": True},
            "grid": f"every modality resampled (bilinear, zeros outside its field of view) onto {grid}",
            "slice_axis": int(d.slice_axis),
            "in_plane": (f"cropped or padded to {size}x{size}" if d.spacing else f"padded to a centred square, resized to {size}x{size}")
            + " (trilinear, anti-aliased); rows superior or anterior up",
        }
    else:
        described = {
            "reader": "one .npy slice stack (slices, height, width) per modality",
            "orientation": "as stored",
            "intensity": {"method": "min-max", "range": [0.0, 1.0]},
            "in_plane": f"resized to {size}x{size} (trilinear, anti-aliased)",
        }
    rounding = "round(255 * v) / 255" if stored == "uint8" else f"through {stored}" if stored != "float32" else "none"
    config = {section: {key: _plain(cfg[section][key]) for key in keys} for section, keys in PREPROCESSING_KEYS.items()}
    config["data"]["format"] = fmt
    return {"format": fmt, **described, "slices": slices, "stored_as": stored, "rounding": rounding, "config": config}


def describe(cfg: DictConfig, spec: LabelSpec, epoch: Optional[int] = None) -> dict:
    """Everything a user of an exported model needs besides the graph."""
    activation = "sigmoid per task" if spec.kind == "multilabel" else "softmax over the classes"
    scaled = "fitted on the validation split at the end of training" if spec.temperature is not None else "1: not calibrated"
    return {
        "label_names": list(spec.names),
        "task": spec.kind,
        "modalities": list(cfg.data.modalities),
        "image_size": int(cfg.data.image_size),
        "min_slices": min_slices_for(cfg.model.slice_mode, cfg.model.slice_window),
        "temperature": temperature_of(spec),
        "probabilities": f"{activation} of logits / temperature (temperature scaling: {scaled})",
        "preprocessing": preprocessing_description(cfg),
        "epoch": "" if epoch is None else str(epoch),
    }


def onnx_metadata_props(description: Mapping) -> dict[str, str]:
    """ONNX `metadata_props` are strings: lists and dicts as JSON, numbers as text."""
    return {key: json.dumps(value) if key in JSON_FIELDS else str(value) for key, value in description.items()}


def read_onnx_description(props: Mapping[str, str], source: str) -> dict:
    """The description back from an ONNX file's `metadata_props`; a file exported without it is a `CheckpointError`."""
    missing = [key for key in ("label_names", "task", *JSON_FIELDS, *NUMBER_FIELDS) if key not in props]
    if missing:
        raise CheckpointError(
            f"{source} lacks the metadata {missing} that `transmed export --format onnx` writes; export the checkpoint again"
        )
    out: dict = dict(props)
    try:
        out.update({key: json.loads(props[key]) for key in JSON_FIELDS})
        out.update({key: kind(props[key]) for key, kind in NUMBER_FIELDS.items()})
    except ValueError as err:
        raise CheckpointError(f"{source}: unreadable TransMed metadata ({err})") from None
    return out


def config_from_description(description: Mapping, overrides: Sequence[str] = ()) -> DictConfig:
    """A config whose preprocessing (`data.datasets.preprocessing`) is the described one, plus `overrides`."""
    return load_config(base=description["preprocessing"]["config"], overrides=overrides)


def temperature_of(spec: LabelSpec) -> list[float] | float:
    """What an export carries: one temperature per task (multilabel) or one for all classes (multiclass); 1 when uncalibrated."""
    values = spec.temperature or (1.0,) * (spec.num_outputs if spec.kind == "multilabel" else 1)
    return list(values) if spec.kind == "multilabel" else values[0]


def label_spec_of(description: Mapping) -> LabelSpec:
    """The label spec of a description, its temperature included (a single number: the same for every output)."""
    names, temperature = tuple(description["label_names"]), description["temperature"]
    if isinstance(temperature, (int, float)):
        temperature = [temperature] * (len(names) if description["task"] == "multilabel" else 1)
    if not isinstance(temperature, list) or not all(isinstance(t, (int, float)) for t in temperature):
        raise CheckpointError(f"metadata temperature {temperature!r} is neither a number nor a list of numbers")
    return LabelSpec(description["task"], names, tuple(temperature))


def _plain(value):
    return OmegaConf.to_container(value) if OmegaConf.is_config(value) else value
