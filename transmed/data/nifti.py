"""Generic multi-sequence studies (`data.format: nifti`), read and preprocessed with MONAI.

Layout: `{root}/labels.csv` with `patient_id`, a label column and optionally `split`
(train/valid/test) or `fold`; `{root}/{patient_id}/{modality}.nii.gz` (or `.nii`, or a folder of
DICOM files) for each modality. Without a `split` column, validation is one fold: the `fold`
column's, or a seeded stratified k-fold by patient. A folder `unlabelled/` that labels.csv does not
list is no patient: `transmed synthetic --unlabelled` keeps the studies without labels there.

Studies without labels (`data.unlabelled_root`, `read_nifti_unlabelled`) are the same patient
folders, beside no labels.csv or one that lists `patient_id` only.

Preprocessing puts every sequence of a study on one grid (the first modality's, or that grid at
`data.spacing`), so a physical point sits at the same slice and pixel in every modality.
"""

from __future__ import annotations

from pathlib import Path
from typing import Hashable, Mapping, Optional, Sequence

import numpy as np
import pandas as pd
from monai.transforms import (
    Compose,
    EnsureChannelFirstd,
    Flipd,
    MapTransform,
    Orientationd,
    ResampleToMatchd,
    Resized,
    ResizeWithPadOrCropd,
    ScaleIntensityRangePercentilesd,
    Spacingd,
    Transposed,
)

from ..core.errors import DataError, StudyError
from .screening import OnError, unlabelled_folder
from .splits import stratified_folds
from .synthesis import UNLABELLED_DIR
from .transforms import CheckStudyd, LoadStudyd, PadToSquared, finalize

LABELS_FILE = "labels.csv"
SPLITS = ("train", "valid", "test")
UNLABELLED = -1  # the label of a study without one (a class index no class has); never a training target
PERCENTILES = (0.5, 99.9)  # per-sequence intensity window to [0, 1]; a higher top keeps a small bright lesion unsaturated


def read_labels(root: str | Path, label_column: str) -> pd.DataFrame:
    """labels.csv as strings, with its file line number per row (`line`)."""
    root = Path(root)
    path = root / LABELS_FILE
    if not root.is_dir():
        where = "" if root.is_absolute() else f" (that is {root.absolute()})"
        raise DataError(f"data root not found: {root}{where}; set data.root to the folder holding {LABELS_FILE} and one folder per patient")
    if not path.is_file():
        raise DataError(f"label file not found: {path}")
    frame = _read_table(path, "patient_id,label[,split]")
    missing = [c for c in ("patient_id", label_column) if c not in frame.columns]
    if missing:
        raise DataError(f"{path} lacks the column(s) {missing} (has {list(frame.columns)}); the label column is data.label_column")
    return _with_lines(frame, path)


def _read_table(path: Path, header: str) -> pd.DataFrame:
    """A CSV file as strings, column names stripped; `header` describes the expected columns for the error message."""
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, skipinitialspace=True, encoding="utf-8-sig")
    except Exception as err:  # noqa: BLE001 - pandas raises several types for a bad CSV
        raise DataError(f"cannot read {path}: {err}; it needs a header row ({header}) and one row per patient") from None
    frame.columns = [str(c).strip() for c in frame.columns]
    return frame


def _with_lines(frame: pd.DataFrame, path: Path) -> pd.DataFrame:
    """Values stripped, the file line number per row (`line`); an empty patient_id is an error."""
    frame = frame.apply(lambda col: col.str.strip())
    frame["line"] = frame.index + 2  # line 1 is the header
    if (frame["patient_id"] == "").any():
        raise DataError(f"{path}, line {int(frame.loc[frame['patient_id'] == '', 'line'].iloc[0])}: empty patient_id")
    return frame


def _is_int(value: str) -> bool:
    return value.lstrip("-").isdigit()


def class_names(frame: pd.DataFrame, label_column: str, classes: Optional[Sequence[str]]) -> tuple[str, ...]:
    """`data.classes` if given, else the sorted unique labels (numerically when all are integers)."""
    if classes:
        return tuple(str(c) for c in classes)
    values = sorted({v for v in frame[label_column] if v != ""})
    if values and all(_is_int(v) for v in values):
        values.sort(key=int)
    if len(values) < 2:
        raise DataError(f"column {label_column!r} of {LABELS_FILE} holds {len(values)} distinct label(s); a classifier needs at least 2")
    return tuple(values)


def label_index(value: str, classes: Sequence[str]) -> Optional[int]:
    """A class name, or an integer index into the classes when no class name is itself an integer."""
    if value in classes:
        return list(classes).index(value)
    if _is_int(value) and not any(_is_int(c) for c in classes) and 0 <= int(value) < len(classes):
        return int(value)
    return None


def modality_file(folder: Path, modality: str) -> list[Path]:
    """The candidate files of one sequence: `{modality}.nii.gz`, `{modality}.nii`, a `{modality}/` DICOM folder."""
    found = [folder / f"{modality}.nii.gz", folder / f"{modality}.nii"]
    return [p for p in found if p.is_file()] + ([folder / modality] if (folder / modality).is_dir() else [])


def _assign_splits(
    frame: pd.DataFrame, labels: dict[str, int], num_folds: int, fold: int, seed: int, on_error: OnError, source: str
) -> dict[str, str]:
    """Patient id -> split, for the patients with a usable label."""
    ids = [pid for pid in frame["patient_id"] if pid in labels]
    if "split" in frame.columns:
        given = dict(zip(frame["patient_id"], frame["split"]))
        out = {}
        for pid in ids:
            if given[pid] in SPLITS:
                out[pid] = given[pid]
            else:
                on_error(StudyError(pid, f"split {given[pid]!r} in {LABELS_FILE} is not one of {list(SPLITS)}", source))
        return out
    if "fold" in frame.columns:
        folds = dict(zip(frame["patient_id"], frame["fold"]))
        bad = [pid for pid in ids if not _is_int(folds[pid])]
        for pid in bad:
            on_error(StudyError(pid, f"fold {folds[pid]!r} in {LABELS_FILE} is not an integer", source))
        assigned = {pid: int(folds[pid]) for pid in ids if pid not in bad}
        if fold not in assigned.values():
            raise DataError(f"data.fold={fold} but the fold column of {source} holds only folds {sorted(set(assigned.values()))}")
    else:
        if not 0 <= fold < num_folds:
            raise DataError(f"data.fold={fold} is not one of the data.num_folds={num_folds} folds (0..{num_folds - 1})")
        assigned = stratified_folds(ids, [labels[pid] for pid in ids], num_folds, seed)
    return {pid: "valid" if f == fold else "train" for pid, f in assigned.items()}


def read_nifti_manifest(
    root: str | Path,
    split: str,
    modalities: Sequence[str],
    label_column: str = "label",
    classes: Optional[Sequence[str]] = None,
    num_folds: int = 5,
    fold: int = 0,
    seed: int = 0,
    on_error: Optional[OnError] = None,
) -> list[dict]:
    """One dict per patient of `split`: `id`, one path per modality, `label` (class index).

    Duplicate ids, labels outside the classes, labelled patients without files and files without
    labels are `StudyError`s naming patient and file; `on_error` raises or records them.
    """
    on_error = on_error or OnError()
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; expected one of {list(SPLITS)}")
    root = Path(root)
    frame = read_labels(root, label_column)
    source = str(root / LABELS_FILE)
    if split == "test" and "split" not in frame.columns:
        raise DataError(f"{source} has no split column, so there is no test split (validation is data.fold of the k folds)")
    names = class_names(frame, label_column, classes)

    counts = frame["patient_id"].value_counts()
    for pid in sorted(counts[counts > 1].index):
        rows = frame[frame["patient_id"] == pid]
        where = f"lines {', '.join(map(str, rows['line']))}"
        if "split" in frame.columns and rows["split"].nunique() > 1:
            where += f", splits {' and '.join(rows['split'])}"
        on_error(StudyError(pid, f"duplicate patient id: {counts[pid]} rows in {LABELS_FILE} ({where})", source))
    labels: dict[str, int] = {}
    for pid, value, line in zip(frame["patient_id"], frame[label_column], frame["line"]):
        if counts[pid] > 1:
            continue
        index = label_index(value, names)
        if index is None:
            on_error(StudyError(pid, f"label {value!r} ({LABELS_FILE} line {line}) is not one of the classes {list(names)}", source))
        else:
            labels[pid] = index

    listed = set(frame["patient_id"])
    for folder in _patient_folders(root):
        if folder.name not in listed and folder.name != UNLABELLED_DIR:
            on_error(StudyError(folder.name, f"has files but no row in {LABELS_FILE}", str(folder)))

    splits = _assign_splits(frame, labels, num_folds, fold, seed, on_error, source)
    manifest = []
    for pid in frame["patient_id"]:
        if splits.get(pid) != split:
            continue
        folder = root / pid
        if not folder.is_dir():
            on_error(StudyError(pid, f"is labelled in {LABELS_FILE} but has no folder of files", str(folder)))
            continue
        files = _study_files(pid, folder, modalities, on_error)
        if files is not None:
            manifest.append({"id": pid, **files, "label": labels[pid]})
    return manifest


def _study_files(pid: str, folder: Path, modalities: Sequence[str], on_error: OnError) -> Optional[dict[str, str]]:
    """One path per modality of a patient's folder; None (after `on_error`) when one is missing or ambiguous."""
    files = {}
    for modality in modalities:
        found = modality_file(folder, modality)
        if len(found) != 1:
            reason = (
                f"missing {modality} file (expected {modality}.nii.gz, {modality}.nii or a {modality}/ DICOM folder)"
                if not found
                else f"{modality} is ambiguous: {[p.name for p in found]}; keep one"
            )
            on_error(StudyError(pid, reason, str(found[0] if found else folder / f"{modality}.nii.gz")))
            return None
        files[modality] = str(found[0])
    return files


def _patient_folders(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def _unlabelled_ids(root: Path, label_column: str) -> list[str]:
    """The patients of an unlabelled folder: those labels.csv lists, or without it every folder.

    A labels.csv that holds labels (a non-empty `label_column`) is a `DataError`: the folder is labelled data.
    """
    path = root / LABELS_FILE
    if not path.is_file():
        return [folder.name for folder in _patient_folders(root)]
    frame = _read_table(path, "patient_id")
    if "patient_id" not in frame.columns:
        raise DataError(
            f"{path} lacks the column patient_id (has {list(frame.columns)}); an unlabelled folder's {LABELS_FILE} lists patient ids"
        )
    frame = _with_lines(frame, path)
    if label_column in frame.columns and (frame[label_column] != "").any():
        first = frame[frame[label_column] != ""].iloc[0]
        raise DataError(
            f"data.unlabelled_root {root} holds labels: column {label_column!r} of {LABELS_FILE} has values "
            f"(line {first['line']}: {first[label_column]!r}); point data.unlabelled_root at studies without labels, "
            f"or remove that column"
        )
    return list(dict.fromkeys(frame["patient_id"]))


def _holds_mrnet_planes(root: Path) -> bool:
    """Whether `root` looks like the MRNet layout: train/ holding folders of .npy files."""
    train = root / "train"
    return train.is_dir() and any(any(plane.glob("*.npy")) for plane in train.iterdir() if plane.is_dir())


def read_nifti_unlabelled(
    root: str | Path, modalities: Sequence[str], label_column: str = "label", on_error: Optional[OnError] = None
) -> list[dict]:
    """One dict per patient of a folder without labels: `id`, one path per modality, and `label`:
    `UNLABELLED`, a placeholder of the labelled items' type (so batches collate), never a training target.

    Patients: those `labels.csv` lists (it may hold `patient_id` only, or an empty label column), or
    without it every folder. A listed patient without a folder, and a missing or ambiguous modality
    file, are `StudyError`s that `on_error` raises or records.
    """
    on_error = on_error or OnError()
    root = unlabelled_folder(root, "{patient_id}/{modality}.nii.gz")
    if _holds_mrnet_planes(root):
        raise DataError(
            f"data.unlabelled_root {root} holds train/{{plane}} folders of .npy files (the MRNet layout) but data.format is nifti; "
            f"point it at patient folders ({root}/{{patient_id}}/{{modality}}.nii.gz) or set data.format=mrnet"
        )
    ids = _unlabelled_ids(root, label_column)
    if not ids:
        found = f"its {LABELS_FILE} lists no patients" if (root / LABELS_FILE).is_file() else "no patient folders"
        raise DataError(f"data.unlabelled_root {root} holds no studies: {found} ({root}/{{patient_id}}/{{modality}}.nii.gz)")
    folders = [root / pid for pid in ids if (root / pid).is_dir()]
    for modality in modalities:
        if folders and not any(modality_file(folder, modality) for folder in folders):
            held = sorted({p.name for folder in folders for p in folder.iterdir() if not p.name.startswith(".")})
            raise DataError(
                f"no patient folder in data.unlabelled_root {root} has a {modality} file ({modality}.nii.gz, {modality}.nii or a "
                f"{modality}/ DICOM folder) for the modality '{modality}' of data.modalities; they hold {held[:8]}: "
                f"the unlabelled studies need every modality of data.modalities"
            )
    manifest = []
    for pid in ids:
        folder = root / pid
        if not folder.is_dir():
            on_error(StudyError(pid, f"is listed in {LABELS_FILE} but has no folder of files", str(folder)))
            continue
        files = _study_files(pid, folder, modalities, on_error)
        if files is not None:
            manifest.append({"id": pid, **files, "label": UNLABELLED})
    return manifest


def _axes_problem(matrix: np.ndarray, what: str) -> Optional[str]:
    """Why the 3x3 part of an affine defines no grid (None: it does)."""
    if not np.isfinite(matrix).all():
        return f"the {what} holds NaN or Inf values"
    sizes = np.linalg.norm(matrix[:3, :3], axis=0)
    if (sizes == 0).any():
        return f"the {what} gives voxel size 0 along axis {int(np.argmax(sizes == 0))} (voxel sizes {np.round(sizes, 4).tolist()})"
    if abs(np.linalg.det(matrix[:3, :3])) < 1e-6 * np.prod(sizes):
        return f"the {what} is singular: its three axes do not span 3D space"
    return None


def geometry_problem(path: Path, affine: np.ndarray) -> Optional[str]:
    """Why a read image has no usable grid: a NIfTI header's raw voxel sizes, sform and qform (the
    readers silently substitute a grid for broken ones), then the affine it was read with (None: fine)."""
    if path.name.lower().endswith((".nii", ".nii.gz")):
        import nibabel as nib
        from nibabel.openers import ImageOpener

        with ImageOpener(path) as f:
            size = f.read(4)
            nifti2 = 540 in (int.from_bytes(size, "little"), int.from_bytes(size, "big"))  # sizeof_hdr: 348 for NIfTI-1
            f.seek(0)  # check=False: the header as written, before nibabel's repairs
            header = (nib.Nifti2Header if nifti2 else nib.Nifti1Header).from_fileobj(f, check=False)
        ndim = int(header["dim"][0])
        pixdim = np.asarray(header["pixdim"][1 : 1 + min(max(ndim, 1), 3)], dtype=np.float64)
        if not np.isfinite(pixdim).all() or (pixdim == 0).any():
            return f"the header's voxel sizes (pixdim) are {pixdim.tolist()}; a voxel size must be a positive number of mm"
        if header["sform_code"] > 0:
            found = _axes_problem(np.asarray(header.get_sform(), dtype=np.float64), "header's sform affine")
            if found:
                return found
        if header["qform_code"] > 0:
            quaternion = [float(header[k]) for k in ("quatern_b", "quatern_c", "quatern_d", "qoffset_x", "qoffset_y", "qoffset_z")]
            if not np.isfinite(quaternion).all():
                return "the header's qform (quatern_*/qoffset_*) holds NaN or Inf values"
    return _axes_problem(np.asarray(affine, dtype=np.float64), "image affine")


class CheckGeometryd(MapTransform):
    """Refuses a modality whose file defines no usable voxel grid (non-finite or singular affine, zero voxel size)."""

    def __init__(self, keys: Sequence[str], id_key: str = "id") -> None:
        super().__init__(keys)
        self.id_key = id_key

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            path = d.get("files", {}).get(key)
            affine = getattr(d[key], "affine", None)
            found = geometry_problem(Path(path), np.eye(4) if affine is None else affine.numpy()) if path else None
            if found:
                raise StudyError(
                    str(d[self.id_key]), f"{key} has no usable voxel grid: {found}; fix the file's header or export the series again", path
                )
        return d


def nifti_preprocess(
    modalities: Sequence[str],
    image_size: int,
    num_slices: Optional[int],
    min_slices: int,
    slice_axis: int = 2,
    spacing: Optional[Sequence[float]] = None,
) -> Compose:
    """Deterministic: read, RAS, check, normalise, one common grid, slices along `slice_axis`, in-plane size.

    The common grid is the first modality's (resampled to `spacing` when given); the others are
    resampled onto it (zeros outside their field of view). In-plane, the grid is padded to a square
    and resized to `image_size`, or with a fixed `spacing` cropped/padded to `image_size` pixels.
    Slices are RAS axis `slice_axis`; rows run along the higher remaining axis, superior or anterior up.
    """
    if slice_axis not in (0, 1, 2):
        raise DataError(f"data.slice_axis must be 0, 1 or 2 (a RAS axis), got {slice_axis}")
    keys = list(modalities)
    reference, others = keys[0], keys[1:]
    slice_dim = slice_axis + 1  # channel first
    rows, cols = sorted({1, 2, 3} - {slice_dim}, reverse=True)
    stages = [
        LoadStudyd(keys),
        CheckGeometryd(keys),
        EnsureChannelFirstd(keys),
        Orientationd(keys, axcodes="RAS", labels=(("L", "R"), ("P", "A"), ("I", "S"))),  # readers give RAS affines
        CheckStudyd(keys, min_slices=min_slices, slice_dim=slice_dim),
        ScaleIntensityRangePercentilesd(keys, lower=PERCENTILES[0], upper=PERCENTILES[1], b_min=0.0, b_max=1.0, clip=True),
    ]
    if spacing:
        stages.append(Spacingd(reference, pixdim=tuple(spacing), mode="bilinear", padding_mode="zeros"))
    if others:
        stages.append(ResampleToMatchd(others, key_dst=reference, mode="bilinear", padding_mode="zeros", dtype=np.float32))
    stages += [
        Transposed(keys, indices=(0, slice_dim, rows, cols)),
        Flipd(keys, spatial_axis=1),
        ResizeWithPadOrCropd(keys, spatial_size=(-1, image_size, image_size)) if spacing else PadToSquared(keys),
        Resized(keys, spatial_size=(num_slices or -1, image_size, image_size), mode="trilinear", anti_aliasing=True),
        CheckStudyd(keys, min_slices=min_slices, when="after resampling onto the common grid"),
        finalize(keys),
    ]
    return Compose(stages)
