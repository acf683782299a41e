"""A standalone MONAI bundle of a trained model: it runs where only MONAI, torch and nibabel are installed.

    BUNDLE/configs/metadata.json    MONAI's metadata (schema 20240725), plus `transmed`: `describe.describe`
    BUNDLE/configs/inference.json   read one file per modality, TransMed's preprocessing as stock MONAI
                                    transforms, the network, probabilities to eval/predictions.json
    BUNDLE/models/model.pt2         the network as a `torch.export` program (`NanPadded`: input `image`)
    BUNDLE/scripts/                 the stack checks, stacking, the inference loop (`bundle_scripts/`)
    BUNDLE/docs/                    README.md (the model card), MONAI's metadata schema (verify_metadata offline)

    cd BUNDLE && python -m monai.bundle run --config_file configs/inference.json \\
        --study#T1 /data/P003/T1.nii.gz --study#T2 /data/P003/T2.nii.gz [--output_file out.json]

The network is a `torch.export` program (`.pt2`, read with `torch.export.load`) rather than
TorchScript: `torch.jit.trace` would freeze the slice count of the trace and TransMed (timm
stems) does not script, while the exported program keeps batch and slices dynamic and needs no
Python class of transmed or timm to load. `torch.export.load(...).module()` refuses `.eval()`,
which MONAI's tools call, so `network_def` wraps its graph in a plain `torch.fx.GraphModule`. The
network takes one tensor, as MONAI's tools call it: (B, M, S, H, W) in [0, 1], modalities as
channels, padded slices and missing modalities NaN.

Offline verification: `verify_metadata` downloads the JSON schema named in metadata.json's
`schema` field unless a file is already at `filepath` (with a matching hash, when one is given).
A copy of that schema (`meta_schema_20240725.json`: the MONAI-extra-test-data 0.8.1 release file,
as kept in Project-MONAI/project-monai.github.io under public/schema/) ships next to this module
and in the bundle's docs/; `verify_bundle` passes it with its md5, so no network is needed. From
the shell, in the bundle folder (verify_metadata needs jsonschema):

    python -m monai.bundle verify_metadata --meta_file configs/metadata.json \\
        --filepath docs/meta_schema_20240725.json --hash_val 76e1add273836515d0bbb3bc71962474
    python -m monai.bundle verify_net_in_out network_def --meta_file configs/metadata.json \\
        --config_file configs/inference.json
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import warnings
from pathlib import Path
from typing import Iterator, Optional

import numpy as np
import torch
from omegaconf import DictConfig
from torch import nn

from ..core.errors import TransMedError
from ..core.labels import LabelSpec
from .common import ExportError
from .describe import describe

SCHEMA_URL = "https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/0.8.1/meta_schema_20240725.json"
SCHEMA_FILE = Path(__file__).with_name("meta_schema_20240725.json")
SCHEMA_MD5 = "76e1add273836515d0bbb3bc71962474"  # of the vendored copy: verify_metadata checks it
SCRIPTS = Path(__file__).with_name("bundle_scripts")
TRANSMED_PAPER = "Dai, Gao & Liu, 'TransMed: Transformers Advance Multi-modal Medical Image Classification', Diagnostics 11(8), 2021"
ORIENTATION_LABELS = [["L", "R"], ["P", "A"], ["I", "S"]]  # as data/nifti.py: the readers give RAS affines


def is_bundle(folder: Path) -> bool:
    return (folder / "configs" / "metadata.json").is_file()


def metadata(cfg: DictConfig, spec: LabelSpec, epoch: Optional[int], eval_metrics: dict) -> dict:
    import monai

    info = describe(cfg, spec, epoch)
    m, size, low, pre = len(info["modalities"]), info["image_size"], info["min_slices"], info["preprocessing"]
    return {
        "schema": SCHEMA_URL,
        "version": "0.1.0",
        "changelog": {"0.1.0": f"exported by transmed export from a checkpoint of epoch {epoch}"},
        "monai_version": monai.__version__,
        "pytorch_version": torch.__version__.split("+")[0],
        "numpy_version": np.__version__,
        "required_packages_version": {"nibabel": _version("nibabel")} if pre["format"] == "nifti" else {},
        "name": f"TransMed {cfg.model.name} ({cfg.model.backbone})",
        "task": f"{spec.kind} classification of multi-modal MRI studies: {', '.join(spec.names)}",
        "description": (
            f"TransMed (CNN stem {cfg.model.backbone} + transformer fusion) over {m} modalities "
            f"({', '.join(info['modalities'])}). `python -m monai.bundle run --config_file configs/inference.json "
            f"{' '.join(f'--study#{name} FILE' for name in info['modalities'])}` reads one file per modality, "
            f"preprocesses it as training did ({pre['reader']}; orientation {pre['orientation']}; intensity "
            f"{pre['intensity']['method']} to [0, 1]; {pre['in_plane']}) and writes eval/predictions.json "
            f"({info['probabilities']}). The network takes 'image' (batch, modality, slice, height, width), "
            f"{size}x{size} pixels, any number of slices >= {low}; padded slices and missing modalities are NaN. "
            "A research model, not for diagnosis."
        ),
        "authors": "TransMed contributors",
        "copyright": "Copyright (c) TransMed contributors",
        "data_source": f"{cfg.data.format} data at {cfg.data.root}",
        "data_type": "nibabel" if pre["format"] == "nifti" else "numpy",
        "image_classes": f"{m} MRI modalities as channels: {', '.join(info['modalities'])}",
        "pred_classes": ", ".join(spec.names),
        "eval_metrics": eval_metrics,
        "intended_use": "Research on multi-modal MRI classification. Not a medical device; not for diagnosis or treatment decisions.",
        "references": [TRANSMED_PAPER],
        "transmed": info,
        "network_data_format": {
            "inputs": {
                "image": {
                    "type": "image",
                    "format": "magnitude",
                    "modality": "MR",
                    "num_channels": m,
                    "spatial_shape": ["*" if low == 1 else f"{low}*n", size, size],  # verify_net_in_out's fake input needs >= low slices
                    "dtype": "float32",
                    "value_range": [0, 1],
                    "is_patch_data": False,
                    "channel_def": {str(i): name for i, name in enumerate(info["modalities"])},
                },
            },
            "outputs": {
                "pred": {
                    "type": "logits",
                    "format": spec.kind,
                    "num_channels": spec.num_outputs,
                    "spatial_shape": [],
                    "dtype": "float32",
                    "value_range": [],
                    "is_patch_data": False,
                    "channel_def": {str(i): name for i, name in enumerate(spec.names)},
                }
            },
        },
    }


def preprocessing_transforms(cfg: DictConfig, info: dict) -> list[dict]:
    """`data.datasets.preprocessing(cfg)` and the stored type's rounding as stock MONAI transforms (plus the
    bundle's stack checks and stacking), ending in `image` (M, S, H, W)."""
    pre, keys, low = info["preprocessing"], info["modalities"], info["min_slices"]
    size, num_slices = info["image_size"], cfg.data.num_slices
    check = {"_target_": "scripts.standalone.CheckStacksd", "keys": keys, "min_slices": low}
    resize = {
        "_target_": "Resized",
        "keys": keys,
        "spatial_size": [num_slices or -1, size, size],
        "mode": "trilinear",
        "anti_aliasing": True,
    }
    if pre["format"] == "nifti":
        slice_dim = pre["slice_axis"] + 1  # channel first
        rows, cols = sorted({1, 2, 3} - {slice_dim}, reverse=True)
        intensity = pre["intensity"]
        reference, others = keys[0], keys[1:]
        stages = [
            {"_target_": "LoadImaged", "keys": keys, "reader": "NibabelReader", "image_only": True},
            {"_target_": "EnsureChannelFirstd", "keys": keys},
            {"_target_": "Orientationd", "keys": keys, "axcodes": "RAS", "labels": ORIENTATION_LABELS},
            {**check, "slice_dim": slice_dim},
            {
                "_target_": "ScaleIntensityRangePercentilesd",
                "keys": keys,
                "lower": intensity["lower"],
                "upper": intensity["upper"],
                "b_min": intensity["range"][0],
                "b_max": intensity["range"][1],
                "clip": intensity["clip"],
            },
        ]
        if cfg.data.spacing:
            stages.append(
                {"_target_": "Spacingd", "keys": reference, "pixdim": list(cfg.data.spacing), "mode": "bilinear", "padding_mode": "zeros"}
            )
        if others:
            stages.append(
                {
                    "_target_": "ResampleToMatchd",
                    "keys": others,
                    "key_dst": reference,
                    "mode": "bilinear",
                    "padding_mode": "zeros",
                    "dtype": "$numpy.float32",
                }
            )
        square = (
            {"_target_": "ResizeWithPadOrCropd", "keys": keys, "spatial_size": [-1, size, size]}
            if cfg.data.spacing
            else {
                "_target_": "Lambdad",
                "keys": keys,
                "func": "$lambda x: monai.transforms.SpatialPad((-1, max(x.shape[-2:]), max(x.shape[-2:])))(x)",
            }
        )
        stages += [
            {"_target_": "Transposed", "keys": keys, "indices": [0, slice_dim, rows, cols]},
            {"_target_": "Flipd", "keys": keys, "spatial_axis": 1},
            square,
            resize,
            {**check, "when": "after resampling onto the common grid"},
        ]
    else:
        stages = [
            {"_target_": "LoadImaged", "keys": keys, "reader": "NumpyReader", "image_only": True},
            {"_target_": "EnsureChannelFirstd", "keys": keys, "channel_dim": "no_channel"},
            check,
            {"_target_": "ScaleIntensityd", "keys": keys, "minv": 0.0, "maxv": 1.0},
            resize,
        ]
    stages.append({"_target_": "EnsureTyped", "keys": keys, "data_type": "tensor", "dtype": "$torch.float32", "track_meta": False})
    if pre["stored_as"] == "uint8":
        stages.append(
            {"_target_": "Lambdad", "keys": keys, "func": "$lambda x: (x * 255.0).round().clamp(0, 255).to(torch.uint8).float() / 255.0"}
        )
    elif pre["stored_as"] == "float16":
        stages += [
            {"_target_": "CastToTyped", "keys": keys, "dtype": "$torch.float16"},
            {"_target_": "CastToTyped", "keys": keys, "dtype": "$torch.float32"},
        ]
    stages.append({"_target_": "scripts.standalone.StackModalitiesd", "keys": keys, "name": "image"})
    return stages


def inference_config(cfg: DictConfig, spec: LabelSpec, device: str = "cpu") -> dict:
    """configs/inference.json; `device`: where the program was traced (its constants live there)."""
    info = describe(cfg, spec)
    return {
        "imports": ["$import numpy", "$import torch", "$import monai"],
        "bundle_root": ".",
        "device": f"$torch.device('{torch.device(device).type}')",
        "modalities": info["modalities"],
        "label_names": info["label_names"],
        "task": info["task"],
        "temperature": info["temperature"],
        "study": {"id": "", **{name: "" for name in info["modalities"]}},
        "datalist": ["@study"],
        "output_file": "$@bundle_root + '/eval/predictions.json'",
        "program": "$torch.export.load(@bundle_root + '/models/model.pt2').module()",
        "network_def": "$torch.fx.GraphModule(@program, @program.graph)",
        "network": "$@network_def.to(@device).eval()",
        "preprocessing": {"_target_": "Compose", "transforms": preprocessing_transforms(cfg, info)},
        "dataset": {"_target_": "Dataset", "data": "@datalist", "transform": "@preprocessing"},
        "run": [
            {
                "_target_": "scripts.standalone.predict",
                "network": "@network",
                "dataset": "@dataset",
                "modalities": "@modalities",
                "label_names": "@label_names",
                "task": "@task",
                "temperature": "@temperature",
                "output_file": "@output_file",
                "device": "@device",
            }
        ],
    }


def write_bundle(
    folder: Path,
    cfg: DictConfig,
    spec: LabelSpec,
    program: torch.export.ExportedProgram,
    card: str,
    epoch: Optional[int],
    eval_metrics: dict,
    device: str = "cpu",
) -> None:
    """The bundle's files; `program`: `graph.export_program(..., single_input=True)`, traced on `device`."""
    for sub in ("configs", "models", "docs", "scripts"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    _write_json(folder / "configs" / "metadata.json", metadata(cfg, spec, epoch, eval_metrics))
    _write_json(folder / "configs" / "inference.json", inference_config(cfg, spec, device))
    torch.export.save(program, str(folder / "models" / "model.pt2"))
    for script in sorted(SCRIPTS.glob("*.py")):
        shutil.copyfile(script, folder / "scripts" / script.name)
    shutil.copyfile(SCHEMA_FILE, folder / "docs" / SCHEMA_FILE.name)
    (folder / "docs" / "README.md").write_text(card)


def load_bundle_network(folder: Path, device: str = "cpu") -> nn.Module:
    """The bundle's network (`image` -> logits) as MONAI builds it from configs/inference.json."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(folder / "configs" / "inference.json"))
    parser["bundle_root"] = str(folder)
    parser["device"] = f"$torch.device('{device}')"
    with _quiet_monai():
        return parser.get_parsed_content("network")


def verify_bundle(folder: Path, device: str = "cpu") -> None:
    """MONAI's `verify_metadata` (against the bundle's copy of the schema, offline) and `verify_net_in_out`."""
    from monai.bundle import verify_metadata, verify_net_in_out

    meta, config = folder / "configs" / "metadata.json", folder / "configs" / "inference.json"
    with _quiet_monai():
        try:
            verify_metadata(meta_file=str(meta), filepath=str(folder / "docs" / SCHEMA_FILE.name), hash_val=SCHEMA_MD5, hash_type="md5")
            verify_net_in_out(net_id="network_def", meta_file=str(meta), config_file=str(config), device=device, bundle_root=str(folder))
        except (ValueError, KeyError, RuntimeError) as err:
            if isinstance(err, TransMedError):
                raise
            raise ExportError(f"the MONAI bundle fails MONAI's verification: {str(err).strip().splitlines()[0]}") from err


@contextlib.contextmanager
def _quiet_monai() -> Iterator[None]:
    """MONAI's bundle scripts log every argument at INFO and warn that no schema hash was given; a pass says nothing."""
    loggers = [logging.getLogger(name) for name in ("monai.bundle.scripts", "monai.apps.utils", "monai.apps")]
    levels = [logger.level for logger in loggers]
    try:
        for logger in loggers:
            logger.setLevel(logging.WARNING)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def _write_json(path: Path, obj: dict) -> None:
    path.write_text(json.dumps(obj, indent=2) + "\n")


def _version(package: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return "unknown"
