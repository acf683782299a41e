"""The generic multi-sequence format: readers on real headers, one common grid, splits, caching, inspection."""

import copy
import json
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from conftest import tiny_nifti_overrides

from transmed.config import load_config
from transmed.data import DataError, build_dataset, generate_nifti, label_spec, read_manifest
from transmed.data.datasets import cache_folder, pipeline, preprocessing
from transmed.data.nifti import nifti_preprocess
from transmed.data.synthesis import NIFTI_CLASSES, parotid_phantom, sequence_grids, world_points

ROOT = Path(__file__).resolve().parents[1]
NIBABEL_DATA = Path(nib.__file__).parent / "tests" / "data"


def real_file(path: Path) -> Path:
    if not path.is_file():
        pytest.skip(f"{path.name} is not shipped with this install")
    return path


def pydicom_file(name: str) -> Path:
    from pydicom.data import get_testdata_file

    found = get_testdata_file(name)
    if found is None:
        pytest.skip(f"pydicom does not ship {name} here")
    return Path(found)


@pytest.fixture(scope="module")
def parotid_root(tmp_path_factory) -> Path:
    return generate_nifti(tmp_path_factory.mktemp("parotid"), num_studies=15, with_split=True, seed=2)


def nifti_cfg(root: Path, tmp_path: Path, **extra: str):
    return load_config(ROOT / "configs" / "parotid.yaml", tiny_nifti_overrides(root, tmp_path, **extra))


def write_study(folder: Path, volumes: dict[str, tuple[np.ndarray, np.ndarray]]) -> dict:
    folder.mkdir(parents=True, exist_ok=True)
    item = {"id": folder.name}
    for name, (data, affine) in volumes.items():
        nib.save(nib.Nifti1Image(data.astype(np.float32), affine), folder / f"{name}.nii.gz")
        item[name] = str(folder / f"{name}.nii.gz")
    return item


def centroid(stack: torch.Tensor) -> np.ndarray:
    """Centre of the bright marker: mean position of the voxels above half the maximum."""
    a = stack.numpy()
    w = np.clip(a - 0.5 * a.max(), 0, None)
    return (np.indices(a.shape).reshape(3, -1) @ w.ravel()) / w.sum()


def test_generated_sequences_differ_in_every_grid_property(parotid_root):
    t1, t2 = (nib.load(parotid_root / "P000" / f"{s}.nii.gz") for s in ("T1", "T2"))
    assert t1.header.get_zooms() != t2.header.get_zooms()
    assert t1.shape != t2.shape and t1.shape[2] != t2.shape[2]  # slice counts differ
    assert not np.allclose(t1.affine[:3, 3], t2.affine[:3, 3])
    assert nib.aff2axcodes(t1.affine) != nib.aff2axcodes(t2.affine)  # T2 is stored right-to-left
    assert t1.get_data_dtype() != t2.get_data_dtype()


@pytest.mark.parametrize("spacing", [None, (1.5, 1.5, 3.0)])
def test_a_physical_point_lands_on_the_same_slice_and_pixel_in_every_sequence(tmp_path, spacing):
    rng = np.random.default_rng(7)
    point = np.array([8.0, -10.0, 6.0])  # RAS mm, inside both fields of view
    background = parotid_phantom(rng, "adenoma")
    volumes = {}
    for sequence, (shape, affine) in sequence_grids(rng).items():
        xyz = world_points(shape, affine)
        marker = np.exp(-((xyz - point) ** 2).sum(-1) / (2 * 4.0**2))
        volumes[sequence] = (0.05 * background(xyz, sequence) + marker, affine)
    item = write_study(tmp_path / "M", volumes)
    out = nifti_preprocess(["T1", "T2"], 32, None, 3, slice_axis=2, spacing=spacing)(item)
    assert out["T1"].shape == out["T2"].shape
    c1, c2 = centroid(out["T1"]), centroid(out["T2"])
    assert abs(c1[0] - c2[0]) <= 1 and np.all(np.abs(c1[1:] - c2[1:]) <= 2), (c1, c2)
    if spacing is None:  # also where the point must be: T1's voxel, axial slices, anterior up, right to the right
        i, j, k = (np.linalg.inv(volumes["T1"][1]) @ np.r_[point, 1.0])[:3]
        scale = 32 / 40  # T1 is 40 x 40 in-plane
        expected = np.array([k, (39 - j + 0.5) * scale - 0.5, (i + 0.5) * scale - 0.5])
        assert abs(c1[0] - expected[0]) <= 1 and np.all(np.abs(c1[1:] - expected[1:]) <= 2), (c1, expected)


def test_real_nifti_headers_oblique_and_spm_resampled_align(tmp_path):
    """nibabel ships anatomical.nii (LAS) and, made by SPM, that image moved (rotated, shifted) and resampled."""
    from nibabel.affines import from_matvec
    from nibabel.eulerangles import euler2mat

    anatomical = nib.load(real_file(NIBABEL_DATA / "anatomical.nii"))
    spm = real_file(NIBABEL_DATA / "reoriented_anat_moved.nii")
    moved_affine = from_matvec(euler2mat(0.1, 0.2, 0.3), [3, 4, 5]) @ anatomical.affine  # as nibabel's make_moved_anat.py
    corr = {}
    for name, affine in (("moved", moved_affine), ("unmoved", anatomical.affine)):
        nib.save(nib.Nifti1Image(np.asarray(anatomical.dataobj), affine), tmp_path / f"{name}.nii")
        out = nifti_preprocess(["A", "B"], 32, None, 3)({"id": name, "A": str(tmp_path / f"{name}.nii"), "B": str(spm)})
        a, b = out["A"].numpy(), out["B"].numpy()
        both = (a > 0.05) & (b > 0.05)
        corr[name] = np.corrcoef(a[both], b[both])[0, 1]
    assert corr["moved"] > 0.5 and corr["moved"] > corr["unmoved"] + 0.3, corr


def test_dicom_series_reader_agrees_with_nibabel_geometry(tmp_path):
    """A series folder made from pydicom's MR_small.dcm reads onto the same grid as a NIfTI whose
    affine comes from nibabel's independent DICOM code."""
    import pydicom

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from nibabel.nicom import dicomwrappers

    template = pydicom.dcmread(pydicom_file("MR_small.dcm"))
    orientation = np.array(template.ImageOrientationPatient, dtype=float)
    normal = np.cross(orientation[:3], orientation[3:])
    series = tmp_path / "S"
    series.mkdir()
    for index in range(5):
        ds = copy.deepcopy(template)
        ds.InstanceNumber = index + 1
        ds.ImagePositionPatient = [float(v) + 2.0 * index * n for v, n in zip(template.ImagePositionPatient, normal)]
        ds.PixelData = np.roll(template.pixel_array, 3 * index, axis=1).tobytes()
        ds.SOPInstanceUID = pydicom.uid.generate_uid()
        ds.save_as(series / f"{4 - index:03d}.dcm")  # file names in reverse: order must come from the headers
    wrappers = [dicomwrappers.wrapper_from_file(p) for p in sorted(series.iterdir(), key=lambda p: -int(p.stem))]
    affine = wrappers[0].affine.copy()  # LPS
    affine[:3, 2] = 2.0 * normal
    data = np.stack([w.get_data() for w in wrappers], axis=-1)
    nib.save(nib.Nifti1Image(data.astype(np.float32), np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine), tmp_path / "S.nii.gz")
    out = nifti_preprocess(["dicom", "nifti"], 32, None, 3)({"id": "s", "dicom": str(series), "nifti": str(tmp_path / "S.nii.gz")})
    assert out["dicom"].shape == (5, 32, 32)
    assert torch.allclose(out["dicom"], out["nifti"], atol=1e-4)


def test_augmentation_is_one_draw_for_all_sequences(parotid_root, tmp_path):
    cfg = nifti_cfg(parotid_root, tmp_path)
    study = parotid_root / "P000"
    item = {"id": "P000", "T1": str(study / "T1.nii.gz"), "T2": str(study / "T1.nii.gz")}  # identical inputs
    transform, plain = pipeline(cfg, train=True), preprocessing(cfg)(dict(item))["T1"]
    changed = 0
    for seed in range(6):
        transform.set_random_state(seed)
        out = transform(dict(item))
        assert torch.equal(out["T1"], out["T2"])
        changed += not torch.allclose(out["T1"], plain)
    assert changed >= 3


def test_split_column_is_used_as_given(parotid_root, tmp_path):
    cfg = nifti_cfg(parotid_root, tmp_path)
    table = {line.split(",")[0]: line.split(",")[2] for line in (parotid_root / "labels.csv").read_text().split()[1:]}
    for split in ("train", "valid", "test"):
        ids = [item["id"] for item in read_manifest(cfg, split)]
        assert ids and ids == sorted(pid for pid, s in table.items() if s == split)
    spec = label_spec(cfg)
    assert spec.kind == "multiclass" and spec.names == tuple(sorted(NIFTI_CLASSES))
    item = read_manifest(cfg, "train")[0]
    assert isinstance(item["label"], int) and spec.names[item["label"]] in NIFTI_CLASSES


def test_without_split_column_stratified_folds_by_patient(tmp_path):
    root = generate_nifti(tmp_path / "p", num_studies=15, with_split=False, seed=3)
    valid_sets = []
    for fold in range(5):
        cfg = nifti_cfg(root, tmp_path, **{"data.fold": str(fold)})
        train, valid = ({item["id"] for item in read_manifest(cfg, s)} for s in ("train", "valid"))
        assert not train & valid and len(train | valid) == 15
        assert sorted(np.bincount([item["label"] for item in read_manifest(cfg, "valid")], minlength=3)) == [1, 1, 1]
        valid_sets.append(valid)
    assert set().union(*valid_sets) == {f"P{i:03d}" for i in range(15)}  # every patient validates exactly once
    again = {item["id"] for item in read_manifest(nifti_cfg(root, tmp_path, **{"data.fold": "4"}), "valid")}
    assert again == valid_sets[4]
    training_seed = {item["id"] for item in read_manifest(nifti_cfg(root, tmp_path, **{"data.fold": "4", "seed": "5"}), "valid")}
    assert training_seed == valid_sets[4]  # repeats with another training seed validate on the same patients
    split_seed = {item["id"] for item in read_manifest(nifti_cfg(root, tmp_path, **{"data.fold": "4", "data.split_seed": "5"}), "valid")}
    assert split_seed != valid_sets[4]
    with pytest.raises(DataError, match="no split column"):
        read_manifest(cfg, "test")
    with pytest.raises(DataError, match="data.fold=7"):
        read_manifest(nifti_cfg(root, tmp_path, **{"data.fold": "7"}), "valid")


def test_fold_column_picks_the_validation_fold(tmp_path):
    root = generate_nifti(tmp_path / "p", num_studies=6, seed=4)
    lines = (root / "labels.csv").read_text().split()
    (root / "labels.csv").write_text("\n".join([lines[0] + ",fold"] + [f"{line},{i % 3}" for i, line in enumerate(lines[1:])]) + "\n")
    cfg = nifti_cfg(root, tmp_path, **{"data.fold": "1"})
    assert [item["id"] for item in read_manifest(cfg, "valid")] == ["P001", "P004"]


def test_cache_is_reused_and_keyed_by_settings_and_files(parotid_root, tmp_path, monkeypatch):
    from transmed.data import transforms

    cfg = nifti_cfg(parotid_root, tmp_path)
    first = build_dataset(cfg, "valid", train=False)
    folder = cache_folder(cfg)
    assert len(list(folder.glob("*.pt"))) == len(first)
    assert json.loads((folder / "settings.json").read_text())["image_size"] == 32
    assert cache_folder(nifti_cfg(parotid_root, tmp_path, **{"data.image_size": "24"})) != folder
    assert cache_folder(nifti_cfg(parotid_root, tmp_path, **{"data.spacing": "[2.0,2.0,4.0]"})) != folder
    assert cache_folder(nifti_cfg(parotid_root, tmp_path, **{"train.lr": "0.1"})) == folder

    def no_reading(self, data):
        raise AssertionError("a cached study was read again")

    monkeypatch.setattr(transforms.LoadStudyd, "__call__", no_reading)
    again = build_dataset(cfg, "valid", train=False)
    assert torch.equal(again[0]["T1"], first[0]["T1"])
    monkeypatch.undo()
    rewritten = Path(again.data[0]["T2"])
    nib.save(nib.load(rewritten), rewritten)  # same content, new file: read again, not served stale
    build_dataset(cfg, "valid", train=False)
    assert len(list(folder.glob("*.pt"))) == len(first) + 1


@pytest.mark.parametrize("with_split", [True, False])
def test_parotid_config_trains_on_mismatched_sequences(tmp_path, with_split):
    from transmed.engine import train

    root = generate_nifti(tmp_path / "data", num_studies=12 if with_split else 9, with_split=with_split, seed=5)
    run = train(nifti_cfg(root, tmp_path, **{"data.num_slices": "6"}))
    record = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    assert {"val/auc", "train/loss", "val/loss"} <= set(record) and np.isfinite(record["train/loss"])
    assert {f"val/auc/{name}" for name in NIFTI_CLASSES} <= set(record)
    assert not (run / "skipped.json").exists()


def test_inspect_prints_statistics_and_writes_montages_and_arrays(parotid_root, tmp_path, capsys):
    from transmed.commands.inspect import main

    config = ROOT / "configs" / "parotid.yaml"
    main(
        [
            "--config",
            str(config),
            f"data.root={parotid_root}",
            "data.image_size=32",
            "--out",
            str(tmp_path / "inspect"),
            "--n",
            "2",
            "--save-arrays",
        ]
    )
    printed = capsys.readouterr().out
    assert "train" in printed and "test" in printed and "adenoma" in printed
    assert "T1" in printed and "2.00 [2.00..2.00], 2.00 [2.00..2.00], 4.00 [4.00..4.00]" in printed  # T1 spacing, RAS order
    assert "T2" in printed and "5.50 [5.50..5.50]" in printed
    pngs = sorted((tmp_path / "inspect").glob("*.png"))
    assert len(pngs) == 2 and all(p.stat().st_size > 10_000 for p in pngs)
    array = np.load(tmp_path / "inspect" / f"{pngs[0].stem}.npy")
    cfg = load_config(config, [f"data.root={parotid_root}", "data.image_size=32"])
    item = next(i for i in read_manifest(cfg, "train") if i["id"] == pngs[0].stem)
    expected = preprocessing(cfg)(dict(item))
    assert array.dtype == np.float32 and array.shape == (2, *expected["T1"].shape)
    assert np.array_equal(array[1], expected["T2"].numpy())
