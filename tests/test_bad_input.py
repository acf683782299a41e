"""Bad input fails loudly, naming study and file; with `data.on_error=skip` it is left out and reported."""

import copy
import json
import os
import re
import shutil
import struct
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from conftest import TINY_BACKBONE
from monai.data import CacheDataset

from transmed.commands import main as transmed_main
from transmed.config import load_config
from transmed.data import StudyError, build_dataset, generate_mrnet, generate_nifti, read_manifest, skipped_studies

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


# --- issue 12: every expected failure of a command is one `error:` line naming file, study or key; never a traceback ---


def one_error_line(argv: list[str], capsys, code: int = 1) -> str:
    """Runs `transmed ARGV` in-process; asserts exit `code`, exactly one `error: ` line on stderr and no traceback."""
    with pytest.raises(SystemExit) as caught:
        transmed_main(argv)
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert caught.value.code == code and len(errors) == 1 and "Traceback" not in err, err
    return errors[0]


@pytest.fixture(scope="module")
def knee_root(tmp_path_factory) -> Path:
    """Four train and two valid MRNet-layout exams (32 px, 3-4 slices); every task has both labels in train."""
    root = generate_mrnet(tmp_path_factory.mktemp("knee"), num_train=4, num_valid=2, image_size=32, min_slices=3, max_slices=4, seed=0)
    for task in ("abnormal", "acl", "meniscus"):
        (root / f"train-{task}.csv").write_text("0000,0\n0001,1\n0002,0\n0003,1\n")
    return root


def knee_train(root: Path, tmp_path: Path, *extra: str) -> list[str]:
    return [
        "train", "--config", "demo.yaml", "data.format=mrnet", f"data.root={root}", "data.image_size=32", f"model.backbone={TINY_BACKBONE}",
        "model.depth=1", "data.cache_dir=null", "wandb.mode=disabled", f"output_dir={tmp_path / 'runs'}", *extra,
    ]  # fmt: skip


def save_npy(root: Path, array: np.ndarray, plane: str = "axial", sid: str = "0000") -> None:
    np.save(root / "train" / plane / f"{sid}.npy", array)


def zero_slices(root):
    save_npy(root, np.zeros((0, 32, 32), np.uint8))  # was `amax()` of an empty array, the study never named
    return r"study 0000 \(file .*train/axial/0000\.npy\): axial has 0 slices, fewer than the 3"


def zero_width(root):
    save_npy(root, np.zeros((4, 32, 0), np.uint8))
    return r"study 0000 \(file .*train/axial/0000\.npy\): axial holds no voxels"


def text_as_npy(root):
    (root / "train" / "axial" / "0000.npy").write_text("not an array\n")  # numpy calls any such file "pickled data"
    return r"study 0000 \(file .*0000\.npy\): cannot read axial file: not a readable \.npy array: no \.npy header"


def non_numeric_exam_id(root):
    with open(root / "train-acl.csv", "a") as f:
        f.write("abc,1\n")
    return r"study abc \(file .*train-acl\.csv\): exam id 'abc' in train-acl\.csv line 5 is not a number"


def task_without_positives(root):
    (root / "train-acl.csv").write_text("0000,0\n0001,0\n0002,0\n0003,0\n")  # was a ValueError from engine/losses.py
    return r"task 'acl' has 0 positive and 4 negative training studies, so it cannot be learned; check .*train-acl\.csv"


def missing_plane_folder(root):
    shutil.rmtree(root / "train" / "axial")
    return r"no folder .*train/axial for the plane 'axial' of data\.modalities; .*holds \['coronal', 'sagittal'\]"


def empty_validation_split(root):
    for task in ("abnormal", "acl", "meniscus"):
        (root / f"valid-{task}.csv").write_text("")
    for path in (root / "valid").glob("*/*.npy"):
        path.unlink()
    return r"the valid split of .* has no usable studies"  # was `torch.cat` of no batches after the first epoch


KNEE_CASES = [
    zero_slices, zero_width, text_as_npy, non_numeric_exam_id, task_without_positives, missing_plane_folder, empty_validation_split,
]


@pytest.mark.parametrize("breaker", KNEE_CASES, ids=[c.__name__ for c in KNEE_CASES])
def test_bad_mrnet_input_is_one_line_and_leaves_no_run_folder(breaker, knee_root, tmp_path, capsys):
    root = shutil.copytree(knee_root, tmp_path / "knee")
    expected = breaker(root)
    line = one_error_line(knee_train(root, tmp_path, "run_name=bad"), capsys)
    assert re.search(expected, line), line
    assert not (tmp_path / "runs").exists(), "a failed start leaves no run folder behind"


def knee_cfg(root: Path, tmp_path: Path, *extra: str):
    return load_config(ROOT / "configs" / "demo.yaml", knee_train(root, tmp_path, *extra)[3:])


def test_empty_stack_is_skipped_under_on_error_skip(knee_root, tmp_path):
    root = shutil.copytree(knee_root, tmp_path / "knee")
    zero_slices(root)
    ds = build_dataset(knee_cfg(root, tmp_path, "data.on_error=skip"), "train", train=False)
    assert [item["id"] for item in ds.data] == ["0001", "0002", "0003"]
    assert [(r["id"], "0 slices" in r["reason"]) for r in ds.skipped] == [("0000", True)]


def test_header_row_in_an_mrnet_label_file_is_not_a_study(knee_root, tmp_path):
    root = shutil.copytree(knee_root, tmp_path / "knee")
    path = root / "train-acl.csv"
    path.write_text("id,label\n" + path.read_text())  # was reported as "study 00id"
    assert [item["id"] for item in read_manifest(knee_cfg(root, tmp_path), "train")] == ["0000", "0001", "0002", "0003"]


def test_non_square_mrnet_slices_warn_naming_the_study(knee_root, tmp_path):
    root = shutil.copytree(knee_root, tmp_path / "knee")
    save_npy(root, np.load(root / "train" / "axial" / "0000.npy")[:, :, :24])
    stretched = r"study 0000 \(file .*0000\.npy\): axial slices are 32x24, not square; they are stretched to 32x32"
    with pytest.warns(UserWarning, match=stretched):
        ds = build_dataset(knee_cfg(root, tmp_path), "train", train=False)
    assert len(ds) == 4


# NIfTI and DICOM geometry: a grid the readers would otherwise invent is refused, naming patient and file


def raw_header_edit(path: Path, edit) -> Path:
    """Rewrites a NIfTI file uncompressed (`.nii`) and lets `edit(bytearray)` change its header bytes: nibabel would repair
    (or refuse to write) the broken values this stands for."""
    image = nib.load(path)
    plain = path.with_name(path.name.replace(".nii.gz", ".nii"))
    nib.save(nib.Nifti1Image(np.asarray(image.dataobj), image.affine), plain)
    if plain != path:
        path.unlink()
    data = bytearray(plain.read_bytes())
    edit(data)
    plain.write_bytes(data)
    return plain


def set_sform(data: bytearray, rows: np.ndarray) -> None:
    data[252:256] = struct.pack("<hh", 0, 1)  # qform_code 0, sform_code 1: the sform alone is the geometry
    data[280:328] = struct.pack("<12f", *np.asarray(rows, dtype=np.float32).ravel())  # srow_x, srow_y, srow_z


def nan_affine(root):
    affine = nib.load(root / "P000" / "T1.nii.gz").affine
    raw_header_edit(root / "P000" / "T1.nii.gz", lambda d: set_sform(d, np.where(np.eye(4)[:3] == 1, np.nan, affine[:3])))
    return "P000", "P000/T1.nii", "T1 has no usable voxel grid: the header's sform affine holds NaN or Inf values"


def singular_affine(root):
    affine = nib.load(root / "P000" / "T2.nii.gz").affine.copy()
    affine[:3, 2] = affine[:3, 0]  # the slice axis parallel to the first: no 3D grid
    raw_header_edit(root / "P000" / "T2.nii.gz", lambda d: set_sform(d, affine[:3]))
    return "P000", "P000/T2.nii", "T2 has no usable voxel grid: the header's sform affine is singular"


def zero_voxel_size(root):
    raw_header_edit(root / "P000" / "T1.nii.gz", lambda d: d.__setitem__(slice(84, 88), struct.pack("<f", 0.0)))  # pixdim[2]
    return "P000", "P000/T1.nii", r"T1 has no usable voxel grid: the header's voxel sizes \(pixdim\) are \[.*, 0\.0, .*\]"


def zero_dicom_pixel_spacing(root):
    import pydicom

    series = dicom_series(root / "P000" / "T2")
    (root / "P000" / "T2.nii.gz").unlink()
    for path in series.iterdir():
        ds = pydicom.dcmread(path)
        ds.PixelSpacing = [0, 0]
        ds.save_as(path)
    return "P000", "P000/T2", "T2 has no usable voxel grid: the image affine gives voxel size 0"


GEOMETRY_CASES = [nan_affine, singular_affine, zero_voxel_size, zero_dicom_pixel_spacing]


@pytest.mark.parametrize("broken", GEOMETRY_CASES, indirect=True, ids=[c.__name__ for c in GEOMETRY_CASES])
def test_unusable_geometry_is_one_line_naming_patient_and_file(broken, tmp_path, capsys):
    root, (sid, file, reason) = broken
    cfg = cfg_for(root, tmp_path)
    line = one_error_line(["train", "--config", str(ROOT / "configs" / "parotid.yaml"), *[f"{k}={v}" for k, v in cfg_items(cfg)]], capsys)
    assert re.search(rf"study {sid} \(file .*{re.escape(file)}\): {reason}", line), line
    skipped = build_dataset(cfg_for(root, tmp_path, **{"data.on_error": "skip"}), "train", train=False).skipped
    assert [(r["id"], r["file"].endswith(file)) for r in skipped] == [(sid, True)]


def cfg_items(cfg) -> list[tuple[str, str]]:
    """The overrides `cfg_for` applies, back as key=value pairs for a command line."""
    d = cfg.data
    return [("data.root", d.root), ("data.classes", CLASSES), ("data.image_size", d.image_size), ("data.augment", "false"),
            ("data.cache_dir", "null"), ("model.backbone", TINY_BACKBONE), ("model.pretrained", "false"),
            ("wandb.mode", "disabled"), ("output_dir", cfg.output_dir), ("run_name", cfg.run_name)]  # fmt: skip


def test_class_only_in_valid_is_one_line(base_root, tmp_path, capsys):
    root = shutil.copytree(base_root, tmp_path / "data")
    labels = ["adenoma", "malignant", "adenoma", "malignant", "warthin", "adenoma"]  # P000-P003 train, P004-P005 valid
    (root / "labels.csv").write_text(
        "patient_id,label,split\n" + "".join(f"P{i:03d},{c},{'train' if i < 4 else 'valid'}\n" for i, c in enumerate(labels))
    )
    items = [(k, "null" if k == "data.classes" else v) for k, v in cfg_items(cfg_for(root, tmp_path))]
    line = one_error_line(["train", "--config", str(ROOT / "configs" / "parotid.yaml"), *[f"{k}={v}" for k, v in items]], capsys)
    assert "class(es) ['warthin'] of ['adenoma', 'malignant', 'warthin'] have no training studies" in line, line
    assert not (tmp_path / "runs").exists()


# checkpoints and the other commands' inputs


@pytest.fixture(scope="module")
def knee_checkpoint(knee_root, tmp_path_factory) -> Path:
    """An untrained tiny model saved as a TransMed checkpoint (what loading needs: model, config, label spec)."""
    from transmed.config import to_dict
    from transmed.core.checkpoint import save_checkpoint
    from transmed.data import label_spec
    from transmed.models import build_model

    out = tmp_path_factory.mktemp("ckpt")
    cfg = knee_cfg(knee_root, out)
    spec = label_spec(cfg)
    path = out / "run" / "checkpoints" / "best.pt"
    save_checkpoint(path, model=build_model(cfg, spec.num_outputs).state_dict(), config=to_dict(cfg), label_spec=spec.to_dict(), epoch=1)
    return path


class _RunsCode:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def bad_checkpoint(kind: str, good: Path, folder: Path) -> Path:
    path = folder / f"{kind}.pt"
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "truncated":
        path.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    elif kind == "random_bytes":
        path.write_bytes(np.random.default_rng(0).bytes(4096))
    elif kind == "state_dict":
        torch.save(torch.load(good, weights_only=True)["model"], path)
    elif kind == "runs_code":
        torch.save({"format": "transmed-checkpoint/1", "x": _RunsCode(str(folder / "pwned"))}, path)
    elif kind == "run_folder":
        return good.parent.parent
    return path


CHECKPOINT_CASES = [
    ("missing", r"checkpoint not found: .*missing\.pt"),
    ("run_folder", r"checkpoint .*/run is a folder, not a checkpoint file; did you mean .*run/checkpoints/best\.pt\?"),
    ("empty", r"checkpoint .*empty\.pt is empty \(0 bytes\)"),
    ("truncated", r"cannot read checkpoint .*truncated\.pt \(corrupt, truncated or not a torch file\)"),
    ("random_bytes", r"cannot read checkpoint .*random_bytes\.pt \(corrupt, truncated or not a torch file\)"),  # not "would run code"
    ("state_dict", r".*state_dict\.pt is not a TransMed checkpoint: it holds a bare state_dict"),
    ("runs_code", r"refusing to load .*runs_code\.pt: unpickling it would call (posix|os)\.system"),
]


@pytest.mark.parametrize("kind,expected", CHECKPOINT_CASES, ids=[k for k, _ in CHECKPOINT_CASES])
def test_bad_checkpoint_is_one_line(kind, expected, knee_checkpoint, knee_root, tmp_path, capsys):
    checkpoint = bad_checkpoint(kind, knee_checkpoint, tmp_path)
    line = one_error_line(["predict", "--checkpoint", str(checkpoint), *predict_inputs(knee_root)], capsys)
    assert re.search(expected, line), line
    assert not (tmp_path / "pwned").exists()


def predict_inputs(root: Path) -> list[str]:
    return [str(root / "valid" / plane / "0004.npy") for plane in ("sagittal", "coronal", "axial")]


def bad_requests(ckpt: Path, root: Path, tmp: Path) -> dict[str, tuple[list[str], int, str]]:
    inputs = predict_inputs(root)
    (tmp / "T1.nii.gz").write_bytes(b"")
    (tmp / "dataset").mkdir()
    (tmp / "dataset" / "notes.txt").write_text("mine")
    return {
        # a model of 3 modalities with data of 2 was a load_state_dict size-mismatch traceback
        "predict_other_modality_count": (["predict", "--checkpoint", str(ckpt), *inputs[:2], "data.modalities=[sagittal,coronal]"], 2,
                                         r"'data\.modalities'.*trained on 3 modalities \['sagittal', 'coronal', 'axial'\]"),
        "evaluate_other_modality_count": (["evaluate", "--checkpoint", str(ckpt), "data.modalities=[sagittal,coronal]"], 2,
                                          r"'data\.modalities'.*trained on 3 modalities"),
        "predict_missing_input": (["predict", "--checkpoint", str(ckpt), *inputs[:2], str(tmp / "no.npy")], 1,
                                  r"axial input not found: .*no\.npy; give one file or DICOM folder per modality"),
        "predict_too_few_inputs": (["predict", "--checkpoint", str(ckpt), *inputs[:2]], 1, r"expected 3 inputs, one per modality"),
        "predict_nifti_into_an_mrnet_model": (["predict", "--checkpoint", str(ckpt), str(tmp / "T1.nii.gz"), *inputs[1:]], 1,
                                              r"sagittal input .*T1\.nii\.gz: this model was trained on MRNet-layout data"),
        "predict_threshold_outside_0_1": (["predict", "--checkpoint", str(ckpt), *inputs, "--threshold", "2"], 2, r"--threshold 2"),
        "predict_json_out_is_a_folder": (["predict", "--checkpoint", str(ckpt), *inputs, "--json-out", str(tmp)], 1,
                                         rf"cannot write {re.escape(str(tmp))}: it is a folder"),
        "evaluate_bootstrap_0": (["evaluate", "--checkpoint", str(ckpt), "--bootstrap", "0"], 2, r"--bootstrap 0"),
        "ablate_bootstrap_0": (["ablate", str(tmp / "grid.yaml"), "--bootstrap", "0"], 2, r"--bootstrap 0"),  # before any run trains
        "study_bootstrap_0": (["study", "studies/depth.yaml", "--bootstrap", "0"], 2, r"--bootstrap 0"),
        "compare_folder_without_evaluations": (["compare", str(tmp)], 1, r"holds no evaluation .*run evaluate\.py"),
        "compare_missing_folder": (["compare", str(tmp / "none")], 1, r"none does not exist \(or is not a folder\)"),
        "robustness_missing_source": (["robustness", "--checkpoint", str(ckpt), "--source", str(tmp / "none"), "--out", str(tmp / "u")],
                                      1, r"--source folder not found: .*none"),
        "synthetic_into_a_used_folder": (["synthetic", str(tmp / "dataset")], 1, r"dataset already exists and is not an empty folder"),
        "config_file_not_found": (["train", "--config", str(tmp / "nope.yaml")], 2, r"config: config file not found: .*nope\.yaml"),
    }  # fmt: skip


REQUESTS = [
    "predict_other_modality_count", "evaluate_other_modality_count", "predict_missing_input", "predict_too_few_inputs",
    "predict_nifti_into_an_mrnet_model", "predict_threshold_outside_0_1", "predict_json_out_is_a_folder", "evaluate_bootstrap_0",
    "compare_folder_without_evaluations", "robustness_missing_source", "synthetic_into_a_used_folder", "config_file_not_found",
]  # fmt: skip


@pytest.mark.parametrize("request_name", REQUESTS)
def test_bad_command_request_is_one_line(request_name, knee_checkpoint, knee_root, tmp_path, capsys):
    argv, code, expected = bad_requests(knee_checkpoint, knee_root, tmp_path)[request_name]
    line = one_error_line(argv, capsys, code)
    assert re.search(expected, line), line
    assert (tmp_path / "dataset" / "notes.txt").read_text() == "mine"
