import numpy as np
import pytest
import torch

from transmed.data import StudyError, build_dataset, build_loader, pad_collate, read_manifest
from transmed.data.synthetic import generate_mrnet


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
    with pytest.raises(StudyError, match=r"study 0025 .*sagittal/0025.npy.*cannot read sagittal"):
        build_dataset(tiny_cfg(**{"data.root": str(root)}), "valid", train=False)


def test_synthetic_generation_is_deterministic(tmp_path):
    a = generate_mrnet(tmp_path / "a", 3, 1, 16, 3, 4, seed=5)
    b = generate_mrnet(tmp_path / "b", 3, 1, 16, 3, 4, seed=5)
    assert np.array_equal(np.load(a / "train/axial/0002.npy"), np.load(b / "train/axial/0002.npy"))
    assert (a / "train-acl.csv").read_text() == (b / "train-acl.csv").read_text()
