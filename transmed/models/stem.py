"""The CNN stem: any timm CNN as a per-slice-image feature extractor (`features_only`)."""

from __future__ import annotations

import difflib
import os
import socket
from pathlib import Path
from typing import Union
from urllib.parse import urlparse

import timm
import torch
from torch import nn

from ..core.errors import ConfigError, WeightsError

Pretrained = Union[bool, str, Path]


class PretrainedWeightsUnavailable(WeightsError):
    """ImageNet weights were asked for but cannot be fetched or found."""


class UnknownBackbone(ValueError):
    """The backbone name is not a timm model."""


def _hub_reachable(timeout: float = 3.0) -> bool:
    """A quick TCP check of the hub (`HF_ENDPOINT` honoured), so an offline machine fails at once
    rather than after minutes of HTTP retries. `HF_HUB_OFFLINE=1` means offline; behind a proxy the
    check is left to the download itself, whose failure is reported the same way."""
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        return False
    if any(os.environ.get(name) for name in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True
    url = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    try:
        with socket.create_connection((url.hostname, url.port or (443 if url.scheme == "https" else 80)), timeout=timeout):
            return True
    except OSError:
        return False


def _weights_cached(backbone: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    cfg = timm.models.get_pretrained_cfg(backbone)
    hub_id = getattr(cfg, "hf_hub_id", None) if cfg is not None else None
    if not hub_id:
        return False
    return any(
        isinstance(try_to_load_from_cache(hub_id, name), str)
        for name in ("model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin")
    )


def _unavailable(backbone: str, reason: str) -> PretrainedWeightsUnavailable:
    return PretrainedWeightsUnavailable(
        f"pretrained weights for backbone '{backbone}' are not available: {reason}. "
        f"Either give a local weights file with model.pretrained=/path/to/{backbone}.pth "
        f"(a timm/torchvision state dict or .safetensors), or train without ImageNet weights "
        f"with model.pretrained=false."
    )


def create_stem(backbone: str, pretrained: Pretrained = False, stage: int = -1) -> nn.Module:
    """timm `features_only` model returning one feature stage (`stage` indexes timm's stages)."""
    kwargs: dict = dict(features_only=True, out_indices=(stage,))
    if isinstance(pretrained, (str, Path)) and not isinstance(pretrained, bool):
        path = Path(pretrained)
        if not path.is_file():
            raise _unavailable(backbone, f"weights file '{path}' does not exist")
        kwargs.update(pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))
    elif pretrained:
        if not _weights_cached(backbone) and not _hub_reachable():
            raise _unavailable(backbone, "they are not in the local cache and the Hugging Face hub cannot be reached (offline?)")
        kwargs.update(pretrained=True)
    try:
        stem = timm.create_model(backbone, **kwargs)
    except IndexError:  # out_indices beyond the backbone's feature stages
        stages = len(timm.create_model(backbone, features_only=True).feature_info)
        raise ConfigError(
            f"invalid value for config key 'model.stem_stage': {stage}; backbone '{backbone}' has {stages} feature stages, "
            f"use 0..{stages - 1}, or -1 (the last) .. -{stages}"
        ) from None
    except RuntimeError as err:
        if "Unknown model" in str(err):
            close = difflib.get_close_matches(backbone, timm.list_models(), n=3)
            hint = f"; close matches: {', '.join(close)}" if close else " (see timm.list_models())"
            raise UnknownBackbone(f"unknown timm backbone '{backbone}'{hint}") from None
        if kwargs.get("pretrained"):
            raise _unavailable(backbone, str(err).splitlines()[0]) from err
        raise
    except OSError as err:
        raise _unavailable(backbone, str(err).splitlines()[0]) from err
    if "pretrained_cfg_overlay" in kwargs:
        check_loaded(stem, Path(pretrained), backbone)
    return stem


def _flat_name(name: str) -> str:
    return name.replace(".", "").replace("_", "")  # timm's feature wrappers rename "stages.0" to "stages_0"


def check_loaded(stem: nn.Module, path: Path, backbone: str) -> None:
    """Refuses a weights file of which fewer than half the stem's tensors arrived.

    timm loads a `features_only` model's weights non-strictly, so a file in another naming (a raw
    package state dict, another backbone's) would leave the stem at its random start with only a warning.
    """
    from .weights import _mappable, read_state_dict

    given = {_flat_name(k): v for k, v in read_state_dict(path).items()}
    own = _mappable(stem.state_dict())
    loaded = sum(
        1 for k, v in own if (ref := given.get(_flat_name(k))) is not None and ref.shape == v.shape and torch.equal(ref.to(v.dtype), v)
    )
    if loaded * 2 < len(own):
        raise WeightsError(
            f"weights file '{path}' fills {loaded} of the {len(own)} tensors of the '{backbone}' stem (it is not in timm's names for "
            f"this backbone); convert it first: transmed weights import {path} --backbone {backbone} --out {path.stem}.safetensors"
        )


class CNNStem(nn.Module):
    """Normalises [0, 1] slice-images with the backbone's own mean/std and returns one feature map.

    `channels_last` keeps the body's weights and its input in NHWC memory layout (faster convolutions
    with bf16 on tensor cores and with oneDNN on many CPUs); the output is the same tensor, only strided differently.
    """

    def __init__(self, backbone: str = "resnet18", pretrained: Pretrained = False, stage: int = -1, channels_last: bool = False) -> None:
        super().__init__()
        self.backbone_name = backbone
        self.channels_last = channels_last
        self.body = create_stem(backbone, pretrained, stage)
        if channels_last:
            self.body.to(memory_format=torch.channels_last)
        cfg = self.body.pretrained_cfg
        self.register_buffer("mean", torch.tensor(cfg.get("mean", (0.5, 0.5, 0.5))).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(cfg.get("std", (0.5, 0.5, 0.5))).view(1, 3, 1, 1), persistent=False)
        self.out_channels: int = self.body.feature_info.channels()[-1]
        self.reduction: int = self.body.feature_info.reduction()[-1]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) in [0, 1] -> (N, C, h, w)."""
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return self.body((images - self.mean) / self.std)[-1]
