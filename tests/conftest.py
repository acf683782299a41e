"""Shared fixtures: a tiny synthetic MRNet-layout dataset and tiny-config builders."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("WANDB_MODE", "disabled")
torch.set_num_threads(2)

TINY_BACKBONE = "test_resnet"  # timm's small test network: real CNN stages, fast on CPU


@pytest.fixture(scope="session")
def mrnet_root(tmp_path_factory) -> Path:
    from transmed.data.synthesis import generate_mrnet

    root = tmp_path_factory.mktemp("mrnet")
    return generate_mrnet(root, num_train=24, num_valid=12, image_size=32, min_slices=4, max_slices=7, seed=1)


def tiny_overrides(root: Path, out: Path, **extra: str) -> list[str]:
    base = {
        "data.format": "mrnet",
        "data.root": str(root),
        "data.image_size": "32",
        "data.augment": "true",
        "output_dir": str(out),
        "run_name": "tiny",
        "model.backbone": TINY_BACKBONE,
        "model.depth": "1",
        "model.slice_stride": "2",
        "train.epochs": "2",
        "train.batch_size": "4",
        "wandb.mode": "disabled",
    }
    base.update(extra)
    return [f"{k}={v}" for k, v in base.items()]


def tiny_nifti_overrides(root: Path, out: Path, **extra: str) -> list[str]:
    """`tiny_overrides` for the NIfTI layout (configs/parotid.yaml): runs under out/runs, the cache under out/cache."""
    nifti = {"data.format": "nifti", "model.pretrained": "false", "train.epochs": "1", "data.cache_dir": str(out / "cache")}
    return tiny_overrides(root, out / "runs", **{**nifti, **extra})


@pytest.fixture
def tiny_cfg(mrnet_root, tmp_path):
    from transmed.config import load_config

    def make(**extra: str):
        return load_config(None, tiny_overrides(mrnet_root, tmp_path / "runs", **extra))

    return make
