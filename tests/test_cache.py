"""The compact cache (data.cache_dtype), the batch-to-model function and the progress bars."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tiny_nifti_overrides

from transmed.data import build_dataset, build_loader, generate_mrnet, generate_nifti, pad_collate, read_manifest
from transmed.data.collate import to_device, to_float
from transmed.data.datasets import PREPROCESSING_VERSION, cache_folder

ROOT = Path(__file__).resolve().parents[1]


def _stack_bytes(item: dict, modalities) -> int:
    return sum(item[m].numel() * item[m].element_size() for m in modalities)


@pytest.fixture(scope="module")
def full_range_root(tmp_path_factory):
    """MRNet-layout studies whose every stack spans 0..255: min-max scaling is then q / 255 exactly."""
    root = generate_mrnet(tmp_path_factory.mktemp("full-range"), 4, 4, 32, 3, 6, seed=2)
    for path in root.glob("*/*/*.npy"):
        stack = np.load(path)
        stack.flat[0], stack.flat[-1] = 0, 255
        np.save(path, stack)
    return root


def test_uint8_cache_holds_the_raw_study_size(tiny_cfg, mrnet_root, tmp_path):
    """At the source's resolution a cached MRNet study is S*H*W*M bytes (a quarter of float32), in memory and on disk."""
    modalities = ["sagittal", "coronal", "axial"]
    manifest = read_manifest(tiny_cfg(), "valid")
    raw = sum(np.load(manifest[0][m]).nbytes for m in modalities)  # the .npy arrays: uint8 (S, 32, 32)
    compact = build_dataset(tiny_cfg(), "valid", train=False)
    assert all(compact[0][m].dtype == torch.uint8 for m in modalities)
    assert _stack_bytes(compact[0], modalities) == raw
    baseline = build_dataset(tiny_cfg(**{"data.cache_dtype": "float32"}), "valid", train=False)
    assert all(baseline[0][m].dtype == torch.float32 for m in modalities)
    assert _stack_bytes(baseline[0], modalities) == 4 * raw
    # on disk (data.cache_dir): each .pt holds one study
    sizes = {}
    for dtype in ("auto", "float32"):
        cfg = tiny_cfg(**{"data.cache_dir": str(tmp_path / "cache"), "data.cache_dtype": dtype})
        build_dataset(cfg, "valid", train=False)
        sizes[dtype] = sum(p.stat().st_size for p in cache_folder(cfg).glob("*.pt"))
    assert sizes["auto"] < sizes["float32"] / 3


def test_compact_path_gives_the_float32_logits_when_preprocessing_is_exact(tiny_cfg, full_range_root):
    """Stacks spanning 0..255 at the source size: the float32 path's intensities are q / 255, so the
    uint8 cache loses nothing and the model's logits agree."""
    from transmed.models import build_model

    overrides = {"data.root": str(full_range_root), "train.batch_size": "4"}
    batches = {}
    for dtype in ("auto", "float32"):
        cfg = tiny_cfg(**overrides, **{"data.cache_dtype": dtype})
        batches[dtype] = next(iter(build_loader(cfg, build_dataset(cfg, "valid", train=False), train=False)))
    assert batches["auto"]["x"].dtype == torch.uint8 and batches["float32"]["x"].dtype == torch.float32
    (xc, mask), (xf, _) = to_device(batches["auto"], "cpu"), to_device(batches["float32"], "cpu")
    assert xc.dtype == torch.float32 and torch.equal(mask, batches["float32"]["mask"])
    assert (xc - xf).abs().max() <= 1e-6
    torch.manual_seed(0)
    model = build_model(tiny_cfg(), 3).eval()
    with torch.no_grad():
        assert (model(xc, mask) - model(xf, mask)).abs().max() <= 1e-6


def test_resized_uint8_cache_is_within_half_a_grey_level(tiny_cfg, mrnet_root):
    """Scaled and resized in float, rounded once: |uint8 path - float32 path| <= 0.5/255 = 1/510 per voxel."""
    overrides = {"data.image_size": "24"}
    compact = build_dataset(tiny_cfg(**overrides), "valid", train=False)
    exact = build_dataset(tiny_cfg(**overrides, **{"data.cache_dtype": "float32"}), "valid", train=False)
    worst = max(float((to_float(compact[i][m]) - exact[i][m]).abs().max()) for i in range(len(exact)) for m in ("sagittal", "axial"))
    assert 0 < worst <= 0.5 / 255 + 1e-6


def test_nifti_cache_is_float16_within_its_rounding(tmp_path):
    from transmed.config import load_config

    root = generate_nifti(tmp_path / "p", num_studies=3, with_split=True, seed=1)  # every study in train
    items = {}
    for dtype in ("auto", "float32"):
        cfg = load_config(ROOT / "configs" / "parotid.yaml", tiny_nifti_overrides(root, tmp_path / dtype, **{"data.cache_dtype": dtype}))
        items[dtype] = build_dataset(cfg, "train", train=False)[0]
    assert items["auto"]["T1"].dtype == torch.float16 and items["float32"]["T1"].dtype == torch.float32
    for key in ("T1", "T2"):
        assert (to_float(items["auto"][key]) - items["float32"][key]).abs().max() <= 2**-12


def test_cache_key_carries_version_and_dtype(tiny_cfg, tmp_path):
    folders = {d: cache_folder(tiny_cfg(**{"data.cache_dir": str(tmp_path), "data.cache_dtype": d})) for d in ("auto", "float32")}
    assert folders["auto"] != folders["float32"]
    settings = json.loads((folders["auto"] / "settings.json").read_text())
    assert settings["version"] == PREPROCESSING_VERSION >= 2 and settings["cache_dtype"] == "uint8"
    assert json.loads((folders["float32"] / "settings.json").read_text())["cache_dtype"] == "float32"


@pytest.mark.parametrize("cache_dir", [False, True])
def test_loader_augmentation_keeps_the_cache_compact(tiny_cfg, tmp_path, cache_dir):
    """data.augment_on=loader (today's MONAI path) still caches uint8 and augments float32 per item."""
    extra = {"data.augment_on": "loader", **({"data.cache_dir": str(tmp_path / "c")} if cache_dir else {})}
    cfg = tiny_cfg(**extra)
    ds = build_dataset(cfg, "train", train=True)
    cached = torch.load(next(cache_folder(cfg).glob("*.pt")), weights_only=True) if cache_dir else ds._cache[0]
    assert cached["axial"].dtype == torch.uint8
    ds.transform.set_random_state(0)
    item = ds[0]
    assert item["axial"].dtype == torch.float32 and -0.2 <= float(item["axial"].min()) and float(item["axial"].max()) <= 1.3


def test_to_device_and_collate_keep_the_stored_type():
    q = torch.tensor([[[0, 51, 255]]], dtype=torch.uint8)
    batch = pad_collate([{"id": "a", "t": q}, {"id": "b", "t": torch.cat([q, q])}], ["t"])
    assert batch["x"].dtype == torch.uint8 and batch["x"][0, 0, 1].abs().sum() == 0
    x, mask = to_device(batch, "cpu")
    assert (
        x.dtype == torch.float32
        and torch.equal(x[1, 0, 0, 0], torch.tensor([0.0, 0.2, 1.0]))
        and mask.tolist() == [[[True, False]], [[True, True]]]
    )
    half = pad_collate([{"id": "a", "t": torch.tensor([[[0.25, 1.0]]], dtype=torch.float16)}], ["t"])
    assert half["x"].dtype == torch.float16 and to_device(half, "cpu")[0].dtype == torch.float32
    mixed = pad_collate([{"id": "a", "t": q}, {"id": "b", "t": q.float() / 255}], ["t"])
    assert mixed["x"].dtype == torch.float32 and torch.allclose(mixed["x"][0], mixed["x"][1])


def test_progress_is_one_line_off_a_terminal_and_silent_on_other_ranks(tiny_cfg, capsys, monkeypatch):
    from transmed.core import progress as P

    build_dataset(tiny_cfg(), "valid", train=False)
    err = capsys.readouterr().err
    assert "build valid dataset: 12 studies in " in err and "\r" not in err and err.count("build valid dataset") == 1
    for _ in P.progress(range(3), desc="a step", unit="batches"):
        pass
    assert capsys.readouterr().err.startswith("a step: 3 batches in ")
    with pytest.raises(ValueError), P.progress(total=2, desc="failing", unit="studies") as by_hand:
        by_hand.update()
        raise ValueError("boom")
    assert "failing" not in capsys.readouterr().err  # an error speaks for a failed step
    monkeypatch.setenv("RANK", "1")
    for _ in P.progress(range(3), desc="rank one", unit="batches"):
        pass
    assert capsys.readouterr().err == ""
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setattr(P, "on_terminal", lambda: True)
    assert not P.progress(range(3), desc="a bar").disable
