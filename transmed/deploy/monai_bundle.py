"""A MONAI bundle of a trained model: configs/metadata.json, configs/inference.json, models/model.pt, docs/README.md.

`configs/inference.json` builds the network with `network_def` (`bundle_network` below: the
registered TransMed model with the checkpoint's constructor arguments, no download) and its
`initialize` step loads `models/model.pt`, a plain state dict (`torch.load(weights_only=True)`).
MONAI's tools read it as any bundle (`monai.bundle.ConfigParser`, `monai.bundle.run`, `verify_net_in_out`);
it holds the network and weights, not a MONAI data pipeline, so it is no full `workflow_type="inference"` bundle.
The network takes `image` (B, M, S, H, W) float32 in [0, 1] (M modalities as channels, S slices,
any S) and an optional `mask` (B, M, S) bool of real slices; it returns logits (B, K). The data
pipeline (reading, resampling, intensity scaling) is TransMed's, described in metadata.json.

Offline verification: `verify_metadata` downloads the JSON schema named in metadata.json's
`schema` field unless a file is already at `filepath` (with a matching hash, when one is given).
A copy of that schema (`meta_schema_20240725.json`: the MONAI-extra-test-data 0.8.1 release file,
as kept in Project-MONAI/project-monai.github.io under public/schema/) ships next to this module;
`verify_bundle` passes it with its md5, so no network is needed. From the shell:

    python -m monai.bundle verify_metadata --meta_file BUNDLE/configs/metadata.json \\
        --filepath "$(python -c 'import transmed.deploy.monai_bundle as b; print(b.SCHEMA_FILE)')" \\
        --hash_val 76e1add273836515d0bbb3bc71962474
    python -m monai.bundle verify_net_in_out network_def --meta_file BUNDLE/configs/metadata.json \\
        --config_file BUNDLE/configs/inference.json
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Iterator, Optional, Sequence

import numpy as np
import torch
from omegaconf import DictConfig
from torch import nn

from ..core.errors import TransMedError
from ..core.labels import LabelSpec
from ..models.factory import dropped_modality_indices, model_kwargs
from ..models.registry import create_model
from .common import ExportError, input_geometry

SCHEMA_URL = "https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/0.8.1/meta_schema_20240725.json"
SCHEMA_FILE = Path(__file__).with_name("meta_schema_20240725.json")
SCHEMA_MD5 = "76e1add273836515d0bbb3bc71962474"  # of the vendored copy: verify_metadata checks it
TRANSMED_PAPER = "Dai, Gao & Liu, 'TransMed: Transformers Advance Multi-modal Medical Image Classification', Diagnostics 11(8), 2021"


def bundle_network(model_name: str, drop_modalities: Sequence[int] = (), **kwargs) -> nn.Module:
    """What a bundle's `network_def` builds: `create_model(model_name, **kwargs)` without pretrained
    weights (the bundle's own follow), seeing `drop_modalities` as missing in eval mode."""
    return create_model(model_name, **{**kwargs, "pretrained": False, "drop_modalities": list(drop_modalities)})


def is_bundle(folder: Path) -> bool:
    return (folder / "configs" / "metadata.json").is_file()


def metadata(cfg: DictConfig, spec: LabelSpec, epoch: Optional[int], eval_metrics: dict) -> dict:
    import monai

    geo = input_geometry(cfg)
    m, size = len(geo["modalities"]), geo["image_size"]
    kind = "sigmoid per task (multilabel)" if spec.kind == "multilabel" else "softmax over classes (multiclass)"
    return {
        "schema": SCHEMA_URL,
        "version": "0.1.0",
        "changelog": {"0.1.0": f"exported by transmed export from a checkpoint of epoch {epoch}"},
        "monai_version": monai.__version__,
        "pytorch_version": torch.__version__.split("+")[0],
        "numpy_version": np.__version__,
        "required_packages_version": {"transmed": _transmed_version(), "timm": _version("timm"), "einops": _version("einops")},
        "name": f"TransMed {cfg.model.name} ({cfg.model.backbone})",
        "task": f"{spec.kind} classification of multi-modal MRI studies: {', '.join(spec.names)}",
        "description": (
            f"TransMed (CNN stem {cfg.model.backbone} + transformer fusion) over {m} modalities "
            f"({', '.join(geo['modalities'])}) as slice stacks of {size}x{size} pixels in [0, 1]. "
            f"Input 'image' (batch, modality, slice, height, width), any number of slices >= {geo['min_slices']}; "
            f"optional forward argument 'mask' (batch, modality, slice) bool, True for real slices (padding and "
            f"missing modalities False; without it every slice is real). Output: logits; probabilities by {kind}. "
            f"Preprocessing: TransMed's {cfg.data.format} pipeline (transmed.data.preprocessing). A research model, not for diagnosis."
        ),
        "authors": "TransMed contributors",
        "copyright": "Copyright (c) TransMed contributors",
        "data_source": f"{cfg.data.format} data at {cfg.data.root}",
        "data_type": "numpy" if cfg.data.format in ("mrnet", "synthetic") else "nibabel",
        "image_classes": f"{m} MRI modalities as channels: {', '.join(geo['modalities'])}",
        "pred_classes": ", ".join(spec.names),
        "eval_metrics": eval_metrics,
        "intended_use": "Research on multi-modal MRI classification. Not a medical device; not for diagnosis or treatment decisions.",
        "references": [TRANSMED_PAPER],
        "network_data_format": {
            "inputs": {
                "image": {
                    "type": "image",
                    "format": "magnitude",
                    "modality": "MR",
                    "num_channels": m,
                    "spatial_shape": ["*", size, size],
                    "dtype": "float32",
                    "value_range": [0, 1],
                    "is_patch_data": False,
                    "channel_def": {str(i): name for i, name in enumerate(geo["modalities"])},
                },
                "mask": {
                    "type": "tensor",
                    "format": "bool mask of real slices (forward keyword argument, optional)",
                    "num_channels": m,
                    "spatial_shape": ["*"],
                    "dtype": "bool",
                    "value_range": [0, 1],
                    "is_patch_data": False,
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


def inference_config(cfg: DictConfig, spec: LabelSpec) -> dict:
    kwargs = {k: v for k, v in model_kwargs(cfg, spec.num_outputs).items() if k != "pretrained"}
    network_def = {
        "_target_": "transmed.deploy.monai_bundle.bundle_network",
        "model_name": cfg.model.name,
        "drop_modalities": dropped_modality_indices(cfg),
        **kwargs,
    }
    return {
        "imports": ["$import torch", "$import transmed.deploy.monai_bundle"],
        "bundle_root": ".",
        "device": "$torch.device('cuda:0' if torch.cuda.is_available() else 'cpu')",
        "ckpt_path": "$@bundle_root + '/models/model.pt'",
        "network_def": network_def,
        "network": "$@network_def.to(@device)",
        "inferer": {"_target_": "SimpleInferer"},
        "initialize": ["$@network.load_state_dict(torch.load(@ckpt_path, map_location=@device, weights_only=True))", "$@network.eval()"],
        "run": ["$@network.eval()"],
    }


def write_bundle(folder: Path, cfg: DictConfig, spec: LabelSpec, state: dict, card: str, epoch: Optional[int], eval_metrics: dict) -> None:
    for sub in ("configs", "models", "docs"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    _write_json(folder / "configs" / "metadata.json", metadata(cfg, spec, epoch, eval_metrics))
    _write_json(folder / "configs" / "inference.json", inference_config(cfg, spec))
    torch.save({k: v.contiguous() for k, v in state.items()}, folder / "models" / "model.pt")
    (folder / "docs" / "README.md").write_text(card)


def load_bundle_network(folder: Path, device: str = "cpu") -> nn.Module:
    """The bundle's network with its weights, as MONAI builds it from configs/inference.json (its `initialize` step)."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(folder / "configs" / "inference.json"))
    parser["bundle_root"] = str(folder)
    parser["device"] = f"$torch.device('{device}')"
    parser.get_parsed_content("initialize")
    return parser.get_parsed_content("network")


def verify_bundle(folder: Path, device: str = "cpu") -> None:
    """MONAI's `verify_metadata` (against the vendored schema, offline) and `verify_net_in_out`."""
    from monai.bundle import verify_metadata, verify_net_in_out

    meta, config = folder / "configs" / "metadata.json", folder / "configs" / "inference.json"
    with tempfile.TemporaryDirectory() as tmp, _quiet_monai():
        schema = Path(tmp) / SCHEMA_FILE.name
        shutil.copyfile(SCHEMA_FILE, schema)  # already there: verify_metadata skips the download
        try:
            verify_metadata(meta_file=str(meta), filepath=str(schema), hash_val=SCHEMA_MD5, hash_type="md5")
            verify_net_in_out(net_id="network_def", meta_file=str(meta), config_file=str(config), device=device)
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


def _transmed_version() -> str:
    from ..core import __version__

    return __version__
