import json
import shutil

import numpy as np
import pytest
import torch

from transmed.data import DataError, StudyError, build_dataset, build_loader, pad_collate, read_manifest
from transmed.data.collate import to_float
from transmed.data.synthesis import generate_mrnet


def test_mrnet_reader_on_generated_layout(tiny_cfg, mrnet_root):
    cfg = tiny_cfg()
    manifest = read_manifest(cfg, "train")
    assert len(manifest) == 24 and manifest[0]["id"] == "0000"
    labels = np.stack([m["label"] for m in manifest])
    assert labels.shape == (24, 3)
    # abnormal is implied by acl or meniscus in the generator
    assert np.all(labels[:, 0] >= np.maximum(labels[:, 1], labels[:, 2]))
    raw = np.load(manifest[0]["sagittal"])
    assert raw.dtype == np.uint8 and raw.shape[1:] == (32, 32) and 4 <= raw.shape[0] <= 7


def test_pipeline_keeps_slice_counts_and_scales(tiny_cfg):
    cfg = tiny_cfg(**{"data.image_size": "24"})
    manifest = read_manifest(cfg, "valid")
    ds = build_dataset(cfg, "valid", train=False, manifest=manifest)
    item = ds[0]
    assert all(item[plane].dtype == torch.uint8 for plane in cfg.data.modalities)  # data.cache_dtype=auto: MRNet's own type
    item = {plane: to_float(item[plane]) for plane in cfg.data.modalities}  # what the model gets (collate.to_device)
    for plane in cfg.data.modalities:
        raw = np.load(manifest[0][plane])
        assert item[plane].shape == (raw.shape[0], 24, 24)
        assert float(item[plane].min()) == pytest.approx(0.0, abs=1e-2) and float(item[plane].max()) == pytest.approx(1.0, abs=5e-2)


def test_num_slices_resamples_every_stack(tiny_cfg):
    cfg = tiny_cfg(**{"data.num_slices": "6"})
    item = build_dataset(cfg, "valid", train=False)[0]
    assert all(item[p].shape[0] == 6 for p in cfg.data.modalities)


def test_augmentation_moves_all_slices_together(tiny_cfg, tmp_path):
    """A flip/affine is one draw per study: a stack of identical slices stays identical."""
    from transmed.data.datasets import pipeline

    cfg = tiny_cfg()
    manifest = read_manifest(cfg, "train")[:1]
    same = np.repeat(np.load(manifest[0]["axial"])[:1], 5, axis=0)
    transform = pipeline(cfg, train=True)
    path = str(tmp_path / "same.npy")
    np.save(path, same)
    item = dict(manifest[0], axial=path)
    for seed in range(5):
        transform.set_random_state(seed)
        out = transform(dict(item))["axial"]
        assert all(torch.equal(out[0], out[k]) for k in range(1, 5))


def test_collate_pads_and_masks():
    a = {"id": "a", "x": torch.ones(3, 4, 4), "y": torch.ones(5, 4, 4), "label": np.array([1.0])}
    b = {"id": "b", "x": torch.ones(2, 4, 4), "y": None, "label": np.array([0.0])}
    batch = pad_collate([a, b], ["x", "y"])
    assert batch["x"].shape == (2, 2, 5, 4, 4)
    assert batch["mask"].sum(-1).tolist() == [[3, 5], [2, 0]]
    assert batch["x"][1, 0, 2:].abs().sum() == 0 and batch["id"] == ["a", "b"]


def test_loader_batches(tiny_cfg):
    cfg = tiny_cfg()
    loader = build_loader(cfg, build_dataset(cfg, "valid", train=False), train=False)
    batch = next(iter(loader))
    assert batch["x"].shape[:2] == (4, 3) and batch["mask"].any(-1).all()
    assert batch["label"].shape == (4, 3)


def _copy_layout(src, dst):
    import shutil

    shutil.copytree(src, dst)
    return dst


def test_missing_plane_file_names_study_and_file(tiny_cfg, mrnet_root, tmp_path):
    root = _copy_layout(mrnet_root, tmp_path / "m")
    (root / "train" / "coronal" / "0003.npy").unlink()
    with pytest.raises(StudyError, match=r"study 0003 .*coronal/0003.npy.*missing coronal"):
        read_manifest(tiny_cfg(**{"data.root": str(root)}), "train")


def test_file_without_label_is_an_error(tiny_cfg, mrnet_root, tmp_path):
    root = _copy_layout(mrnet_root, tmp_path / "m")
    np.save(root / "train" / "axial" / "0999.npy", np.zeros((5, 32, 32), np.uint8))
    with pytest.raises(StudyError, match="0999.*no label"):
        read_manifest(tiny_cfg(**{"data.root": str(root)}), "train")


def test_corrupt_file_names_study_and_file(tiny_cfg, mrnet_root, tmp_path):
    root = _copy_layout(mrnet_root, tmp_path / "m")
    (root / "valid" / "sagittal" / "0025.npy").write_bytes(b"\x93NUMPY garbage")
    with pytest.raises(StudyError, match=r"study 0025 .*sagittal/0025.npy.*cannot read sagittal file: not a readable .npy array"):
        build_dataset(tiny_cfg(**{"data.root": str(root)}), "valid", train=False)


def test_corrupt_file_ends_train_py_with_one_line_and_exit_1(mrnet_root, tmp_path):
    """The error is raised after the caching threads are done: raised from inside them, it aborted the
    interpreter at exit (SIGABRT, exit 134) after printing the message."""
    import subprocess
    import sys
    from pathlib import Path

    from conftest import tiny_overrides

    root = _copy_layout(mrnet_root, tmp_path / "m")
    (root / "train" / "coronal" / "0003.npy").write_bytes(b"\x93NUMPY garbage")
    args = ["train.py", "--config", "configs/demo.yaml", *tiny_overrides(root, tmp_path / "runs")]
    result = subprocess.run([sys.executable, *args], cwd=Path(__file__).parents[1], capture_output=True, text=True, timeout=300)
    assert result.returncode == 1, result.stderr[-2000:]
    assert "error: study 0003" in result.stderr and "Traceback" not in result.stderr and "terminate called" not in result.stderr


def test_synthetic_generation_is_deterministic(tmp_path):
    a = generate_mrnet(tmp_path / "a", 3, 1, 16, 3, 4, seed=5)
    b = generate_mrnet(tmp_path / "b", 3, 1, 16, 3, 4, seed=5)
    assert np.array_equal(np.load(a / "train/axial/0002.npy"), np.load(b / "train/axial/0002.npy"))
    assert (a / "train-acl.csv").read_text() == (b / "train-acl.csv").read_text()


def test_val_fraction_carves_valid_out_of_train_and_tests_on_mrnet_valid(tiny_cfg, mrnet_root):
    from transmed.data.mrnet import read_mrnet_manifest

    cfg = tiny_cfg(**{"data.val_fraction": "0.25"})
    train, valid, test = ({m["id"] for m in read_manifest(cfg, s)} for s in ("train", "valid", "test"))
    mrnet = {s: read_mrnet_manifest(mrnet_root, s, list(cfg.data.modalities), list(cfg.data.tasks)) for s in ("train", "valid")}
    assert not train & valid and train | valid == {m["id"] for m in mrnet["train"]} and len(valid) == 6
    assert test == {m["id"] for m in mrnet["valid"]}
    tuples = {m["id"]: tuple(m["label"]) for m in mrnet["train"]}
    for combo in set(tuples.values()):  # every label combination keeps its share (stratified)
        members = [sid for sid, t in tuples.items() if t == combo]
        assert abs(sum(sid in valid for sid in members) - 0.25 * len(members)) <= 1
    assert {m["id"] for m in read_manifest(cfg, "valid")} == valid
    assert {m["id"] for m in read_manifest(tiny_cfg(**{"data.val_fraction": "0.25", "seed": "3"}), "valid")} == valid
    assert {m["id"] for m in read_manifest(tiny_cfg(**{"data.val_fraction": "0.25", "data.split_seed": "3"}), "valid")} != valid
    assert len(build_dataset(cfg, "test", train=False)) == 12
    with pytest.raises(DataError, match="data.val_fraction"):
        read_manifest(tiny_cfg(), "test")


def test_exam_in_two_splits_is_an_error_or_skipped(tiny_cfg, mrnet_root, tmp_path):
    root = _copy_layout(mrnet_root, tmp_path / "m")
    for task in ("abnormal", "acl", "meniscus"):
        with open(root / f"valid-{task}.csv", "a") as f:
            f.write("0002,0\n")
    for plane in ("sagittal", "coronal", "axial"):
        shutil.copy(root / "train" / plane / "0002.npy", root / "valid" / plane / "0002.npy")
    with pytest.raises(StudyError, match=r"study 0002 .*more than one split \(train and valid\)"):
        read_manifest(tiny_cfg(**{"data.root": str(root)}), "train")
    cfg = tiny_cfg(**{"data.root": str(root), "data.on_error": "skip"})
    for split in ("train", "valid"):
        manifest = read_manifest(cfg, split)
        assert "0002" not in {m["id"] for m in manifest} and [r["id"] for r in manifest.skipped] == ["0002"]


def test_mrnet_skip_mode_reports_missing_and_unlabelled_files(tiny_cfg, mrnet_root, tmp_path):
    root = _copy_layout(mrnet_root, tmp_path / "m")
    (root / "train" / "coronal" / "0003.npy").unlink()
    np.save(root / "train" / "axial" / "0999.npy", np.zeros((5, 32, 32), np.uint8))
    ds = build_dataset(tiny_cfg(**{"data.root": str(root), "data.on_error": "skip"}), "train", train=False)
    assert len(ds) == 23 and {r["id"]: r["reason"] for r in ds.skipped} == {
        "0003": "missing coronal file",
        "0999": "has a file in axial/ but no label in train-abnormal.csv",
    }


def test_knee_config_trains_with_auc_per_task(tmp_path):
    from pathlib import Path

    from conftest import TINY_BACKBONE

    from transmed.config import load_config
    from transmed.engine import train

    root = generate_mrnet(tmp_path / "knee", 30, 4, 32, 3, 4, seed=1)  # seed 1: both classes of every task in valid
    overrides = {
        "data.root": root,
        "data.image_size": 32,
        "data.num_workers": 0,
        "data.cache_dir": tmp_path / "cache",
        "model.backbone": TINY_BACKBONE,
        "model.pretrained": "false",
        "model.variant": "tiny",
        "model.depth": 1,
        "model.slice_stride": 2,
        "train.epochs": 1,
        "output_dir": tmp_path / "runs",
        "run_name": "knee",
        "wandb.mode": "disabled",
    }
    config = Path(__file__).resolve().parents[1] / "configs" / "knee.yaml"
    run = train(load_config(config, [f"{k}={v}" for k, v in overrides.items()]))
    record = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    assert all(np.isfinite(record[f"val/auc/{task}"]) for task in ("abnormal", "acl", "meniscus"))


def test_synthetic_data_made_with_other_settings_is_not_reused(tmp_path):
    from transmed.config import load_config
    from transmed.data import DataError
    from transmed.data.datasets import ensure_synthetic

    root = tmp_path / "knee"
    settings = ["data.format=synthetic", f"data.root={root}", "data.synthetic.num_train=3", "data.synthetic.num_valid=1"]
    settings += ["data.synthetic.image_size=16", "data.synthetic.min_slices=3", "data.synthetic.max_slices=4"]
    ensure_synthetic(load_config(None, settings))
    made = sorted(p.name for p in (root / "train" / "axial").iterdir())
    ensure_synthetic(load_config(None, settings))  # same settings: reused as is
    assert sorted(p.name for p in (root / "train" / "axial").iterdir()) == made == ["0000.npy", "0001.npy", "0002.npy"]
    with pytest.raises(DataError, match=r"other settings: num_train=3 \(config: 5\).*delete the folder"):
        ensure_synthetic(load_config(None, [*settings, "data.synthetic.num_train=5"]))
    (root / "SYNTHETIC").unlink()  # as after an interrupted generation
    with pytest.raises(DataError, match="no complete synthetic dataset"):
        ensure_synthetic(load_config(None, settings))


def test_worker_augmentation_replays_for_a_reseeded_generator(tiny_cfg):
    """What the trainer does each epoch (reseed the loader's generator) must give the same augmented
    batches with worker processes too, or a resumed run would not replay its epochs."""
    cfg = tiny_cfg(**{"data.num_workers": "1", "train.batch_size": "2"})
    generator = torch.Generator()
    loader = build_loader(cfg, build_dataset(cfg, "train", train=True), train=True, generator=generator)

    def first_batch(seed: int) -> torch.Tensor:
        generator.manual_seed(seed)
        return next(iter(loader))["x"]

    a, b, other = first_batch(7), first_batch(7), first_batch(8)
    assert torch.equal(a, b) and not torch.equal(a, other)
