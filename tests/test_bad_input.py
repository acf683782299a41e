"""Bad input fails loudly, naming study and file; with `data.on_error=skip` it is left out and reported."""

import copy
import json
import re
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from monai.data import CacheDataset

from transmed.config import load_config
from transmed.data import StudyError, build_dataset, generate_nifti, read_manifest, skipped_studies

from conftest import TINY_BACKBONE

ROOT = Path(__file__).resolve().parents[1]
NIBABEL_DATA = Path(nib.__file__).parent / "tests" / "data"
CLASSES = "[adenoma,malignant,warthin]"


def real_file(path: Path) -> Path:
    if path is None or not Path(path).is_file():
        pytest.skip(f"{path} is not shipped with this install")
    return Path(path)


def pydicom_file(name: str) -> Path:
    from pydicom.data import get_testdata_file

    return real_file(get_testdata_file(name))


def dicom_series(folder: Path, count: int = 4, prefix: str = "") -> Path:
    """A series folder of copies of pydicom's MR_small.dcm, stacked along its slice normal."""
    import pydicom

    template = pydicom.dcmread(pydicom_file("MR_small.dcm"))
    template.SeriesInstanceUID = pydicom.uid.generate_uid()
    folder.mkdir(parents=True, exist_ok=True)
    for index in range(count):
        ds = copy.deepcopy(template)
        ds.InstanceNumber = index + 1
        ds.ImagePositionPatient = [float(v) + (1.0 * index if axis == 2 else 0.0) for axis, v in enumerate(template.ImagePositionPatient)]
        ds.SOPInstanceUID = pydicom.uid.generate_uid()
        ds.save_as(folder / f"{prefix}{index:03d}.dcm")
    return folder


def rewrite(path: Path, change) -> None:
    image = nib.load(path)
    data = change(np.asarray(image.dataobj, dtype=np.float32))
    nib.save(nib.Nifti1Image(data, image.affine), path)


def replace_t2(study: Path, source: Path, name: str = "T2.nii") -> None:
    (study / "T2.nii.gz").unlink()
    (shutil.copytree if source.is_dir() else shutil.copy)(source, study / name)


def set_label(root: Path, pid: str, label: str) -> None:
    lines = (root / "labels.csv").read_text().splitlines()
    (root / "labels.csv").write_text("\n".join(re.sub(rf"^{pid},[^,]*", f"{pid},{label}", line) for line in lines) + "\n")


def unreadable(root):
    (root / "P000" / "T2.nii.gz").write_bytes(b"this is not a NIfTI file")
    return "P000", "P000/T2.nii.gz", "cannot read T2 file"


def truncated(root):
    path = root / "P000" / "T1.nii.gz"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return "P000", "P000/T1.nii.gz", "cannot read T1 file"


def truncated_dicom_slice(root):
    series = dicom_series(root / "P000" / "T2")
    (root / "P000" / "T2.nii.gz").unlink()
    shutil.copy(pydicom_file("MR_truncated.dcm"), series / "004.dcm")
    return "P000", "P000/T2/004.dcm", "cannot read T2 file: unreadable DICOM slice"


def foreign_file_in_dicom_series(root):
    series = dicom_series(root / "P000" / "T2")
    (root / "P000" / "T2.nii.gz").unlink()
    (series / "notes.txt").write_text("not a slice")
    return "P000", "P000/T2/notes.txt", "cannot read T2 file: unreadable DICOM slice"


def mixed_dicom_series(root):
    series = dicom_series(root / "P000" / "T2")
    dicom_series(series, prefix="echo2-")  # a second series at the same positions, as a multi-echo export
    (root / "P000" / "T2.nii.gz").unlink()
    return "P000", "P000/T2", "cannot read T2 file: the DICOM folder mixes 2 series"


def missing_modality(root):
    (root / "P000" / "T2.nii.gz").unlink()
    return "P000", "P000/T2.nii.gz", "missing T2 file"


def nan_voxels(root):
    rewrite(root / "P000" / "T1.nii.gz", lambda a: np.where(np.arange(a.size).reshape(a.shape) % 97 == 0, np.nan, a))
    return "P000", "P000/T1.nii.gz", r"T1 holds \d+ NaN or Inf voxels"


def inf_voxels(root):
    rewrite(root / "P000" / "T2.nii.gz", lambda a: np.where(a > np.percentile(a, 99.9), np.inf, a))
    return "P000", "P000/T2.nii.gz", r"T2 holds \d+ NaN or Inf voxels"


def nan_voxels_real_file(root):
    replace_t2(root / "P000", real_file(NIBABEL_DATA / "resampled_anat_moved.nii"))  # SPM writes NaN outside the brain
    return "P000", "P000/T2.nii", r"T2 holds \d+ NaN or Inf voxels"


def constant_volume(root):
    rewrite(root / "P000" / "T1.nii.gz", lambda a: np.full_like(a, 7.0))
    return "P000", "P000/T1.nii.gz", "T1 is a constant volume"


def too_few_slices(root):
    rewrite(root / "P000" / "T1.nii.gz", lambda a: a[..., 8:10])
    return "P000", "P000/T1.nii.gz", "T1 has 2 slices, fewer than the 3"


def too_few_slices_real_dicom(root):
    series = root / "P000" / "T2"
    series.mkdir()
    for name in ("0.dcm", "1.dcm"):  # two slices of a real, slightly oblique series shipped with nibabel
        shutil.copy(real_file(NIBABEL_DATA / name), series / name)
    (root / "P000" / "T2.nii.gz").unlink()
    return "P000", "P000/T2", "T2 has 2 slices, fewer than the 3"


def label_outside_classes(root):
    set_label(root, "P000", "lymphoma")
    return "P000", "labels.csv", "label 'lymphoma' .* is not one of the classes"


def duplicate_patient(root):
    with open(root / "labels.csv", "a") as f:
        f.write("P001,warthin,valid\n")
    return "P001", "labels.csv", "duplicate patient id: 2 rows .*splits train and valid"


def labels_without_files(root):
    shutil.rmtree(root / "P000")
    return "P000", "P000", "labelled in labels.csv but has no folder"


def files_without_labels(root):
    shutil.copytree(root / "P001", root / "P999")
    return "P999", "P999", "has files but no row in labels.csv"


CASES = [
    unreadable,
    truncated,
    truncated_dicom_slice,
    foreign_file_in_dicom_series,
    mixed_dicom_series,
    missing_modality,
    nan_voxels,
    inf_voxels,
    nan_voxels_real_file,
    constant_volume,
    too_few_slices,
    too_few_slices_real_dicom,
    label_outside_classes,
    duplicate_patient,
    labels_without_files,
    files_without_labels,
]


@pytest.fixture(scope="module")
def base_root(tmp_path_factory) -> Path:
    """Six generated T1/T2 studies: P000-P003 train, P004-P005 valid."""
    root = generate_nifti(tmp_path_factory.mktemp("base"), num_studies=6, seed=11)
    rows = (root / "labels.csv").read_text().split()[1:]
    (root / "labels.csv").write_text(
        "\n".join(["patient_id,label,split"] + [f"{r},{'train' if i < 4 else 'valid'}" for i, r in enumerate(rows)]) + "\n"
    )
    return root


def cfg_for(root: Path, tmp_path: Path, **extra: str):
    base = {
        "data.root": str(root),
        "data.classes": CLASSES,
        "data.image_size": "40",
        "data.augment": "false",
        "data.cache_dir": "null",  # parotid.yaml's cache/parotid would land in the working directory
        "model.backbone": TINY_BACKBONE,
        "model.pretrained": "false",
        "wandb.mode": "disabled",
        "output_dir": str(tmp_path / "runs"),
        "run_name": "bad",
    }
    base.update(extra)
    return load_config(ROOT / "configs" / "parotid.yaml", [f"{k}={v}" for k, v in base.items()])


@pytest.fixture
def broken(request, base_root, tmp_path):
    root = shutil.copytree(base_root, tmp_path / "data")
    return root, request.param(root)


@pytest.mark.parametrize("broken", CASES, indirect=True, ids=[c.__name__ for c in CASES])
def test_error_names_study_and_file(broken, tmp_path):
    root, (sid, file, reason) = broken
    cfg = cfg_for(root, tmp_path, **{"data.cache_dir": str(tmp_path / "cache")})
    with pytest.raises(StudyError) as caught:
        build_dataset(cfg, "train", train=True)
    err = caught.value
    assert err.study_id == sid and err.file.endswith(file) and re.search(reason, err.reason), str(err)
    assert f"study {sid}" in str(err) and file in str(err)


@pytest.mark.parametrize("broken", CASES, indirect=True, ids=[c.__name__ for c in CASES])
def test_skip_leaves_the_study_out_and_reports_it(broken, tmp_path):
    root, (sid, file, reason) = broken
    cfg = cfg_for(root, tmp_path, **{"data.on_error": "skip", "data.cache_dir": str(tmp_path / "cache")})
    train_ds = build_dataset(cfg, "train", train=True, manifest=read_manifest(cfg, "train"))
    valid_ds = build_dataset(cfg, "valid", train=False)
    skipped = skipped_studies(train_ds, valid_ds)
    assert len(skipped) == 1, skipped
    assert skipped[0]["id"] == sid and skipped[0]["file"].endswith(file) and re.search(reason, skipped[0]["reason"])
    kept = [item["id"] for ds in (train_ds, valid_ds) for item in ds.data]
    listed = [line.split(",")[0] for line in (root / "labels.csv").read_text().split()[1:]]
    assert sid not in kept and sorted(kept) == sorted({pid for pid in listed if pid != sid and (root / pid).is_dir()})


def test_skip_without_disk_cache_screens_before_caching(base_root, tmp_path):
    root = shutil.copytree(base_root, tmp_path / "data")
    constant_volume(root)
    ds = build_dataset(cfg_for(root, tmp_path, **{"data.on_error": "skip"}), "train", train=False)
    assert isinstance(ds, CacheDataset)
    assert [item["id"] for item in ds.data] == ["P001", "P002", "P003"] and len(ds) == 3
    assert [r["id"] for r in ds.skipped] == ["P000"] and ds[0]["T1"].shape[1:] == (40, 40)


def test_training_goes_on_without_the_bad_studies_and_lists_them(tmp_path):
    from transmed.engine import train

    root = generate_nifti(tmp_path / "data", num_studies=15, with_split=True, seed=12)  # 9 train, 3 valid, 3 test
    table = dict(line.split(",")[::2] for line in (root / "labels.csv").read_text().split()[1:])
    train_ids = sorted(pid for pid, split in table.items() if split == "train")
    valid_ids = sorted(pid for pid, split in table.items() if split == "valid")
    (root / train_ids[0] / "T2.nii.gz").write_bytes(b"garbage")
    rewrite(root / valid_ids[0] / "T1.nii.gz", lambda a: np.zeros_like(a))
    set_label(root, train_ids[1], "lymphoma")
    shutil.copytree(root / train_ids[2], root / "P999")
    cfg = cfg_for(
        root,
        tmp_path,
        **{"data.on_error": "skip", "data.image_size": "32", "data.num_slices": "6", "train.epochs": "1", "model.depth": "1"},
    )
    with pytest.warns(UserWarning, match="left out 4 studies"):
        run = train(cfg)
    skipped = {r["id"]: r for r in json.loads((run / "skipped.json").read_text())}
    assert set(skipped) == {train_ids[0], valid_ids[0], train_ids[1], "P999"}
    assert "cannot read T2" in skipped[train_ids[0]]["reason"] and skipped[train_ids[0]]["file"].endswith("T2.nii.gz")
    assert "constant volume" in skipped[valid_ids[0]]["reason"]
    assert "lymphoma" in skipped[train_ids[1]]["reason"] and "no row" in skipped["P999"]["reason"]
    assert json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])["epoch"] == 1
    from transmed.evaluation.evaluate import evaluate_checkpoint

    with pytest.warns(UserWarning, match="left out 3 studies"):
        out = evaluate_checkpoint(run / "checkpoints" / "best.pt", n_bootstrap=10)
    # the valid study that fails to load, and the labels.csv problems found before the split is taken
    assert {r["id"] for r in json.loads((out / "skipped.json").read_text())} == {valid_ids[0], train_ids[1], "P999"}
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["skipped"] == 3 and metrics["n"] == len(valid_ids) - 1
