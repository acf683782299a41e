"""MRNet-v1.0 layout: `{root}/{split}/{plane}/NNNN.npy` and `{root}/{split}-{task}.csv` (`NNNN,label`, no header).

Studies without labels (`data.unlabelled_root`, `read_mrnet_unlabelled`): `{root}/train/{plane}/NNNN.npy`, no label files.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from ..core.errors import DataError, StudyError
from .screening import OnError, unlabelled_folder
from .splits import check_disjoint, stratified_holdout

MRNET_SPLITS = ("train", "valid")


def _read_labels(path: Path, on_error: OnError) -> tuple[dict[str, int], set[str]]:
    """Labels per exam, and the exams whose rows are unusable (reported through `on_error`)."""
    if not path.is_file():
        raise DataError(f"label file not found: {path}")
    labels: dict[str, int] = {}
    bad: set[str] = set()
    with open(path, newline="") as f:
        for line_no, row in enumerate(csv.reader(f), start=1):
            if not row:
                continue
            if len(row) != 2:
                raise DataError(f"{path}, line {line_no}: expected 'NNNN,label', got {row}")
            raw, value = row[0].strip(), row[1].strip()
            if not raw.isdigit():
                if line_no == 1 and value not in ("0", "1"):
                    continue  # a header row (`id,label`): MRNet's files have none, a spreadsheet export may
                reason = f"exam id {raw!r} in {path.name} line {line_no} is not a number (MRNet exams are 0000, 0001, ...)"
                on_error(StudyError(raw, reason, str(path)))
                bad.add(raw)
                continue
            sid = raw.zfill(4)
            if sid in labels or sid in bad:
                on_error(StudyError(sid, f"duplicate exam id: appears twice in {path.name} (again on line {line_no})", str(path)))
                bad.add(sid)
            elif value not in ("0", "1"):
                on_error(StudyError(sid, f"label {value!r} in {path.name} line {line_no} is not 0 or 1", str(path)))
                bad.add(sid)
            else:
                labels[sid] = int(value)
    return {sid: v for sid, v in labels.items() if sid not in bad}, bad


def read_mrnet_manifest(
    root: str | Path, split: str, planes: Sequence[str], tasks: Sequence[str], on_error: Optional[OnError] = None
) -> list[dict]:
    """One dict per exam of MRNet's `split`: `id`, one `.npy` path per plane, `label` (float32, one entry per task).

    Every labelled exam must have a file for every plane and every file must have labels: a mismatch
    is a `StudyError` naming the exam and the file, raised or (skip) recorded by `on_error`.
    """
    on_error = on_error or OnError()
    root = Path(root)
    if not root.is_dir():
        where = "" if root.is_absolute() else f" (that is {root.absolute()})"
        raise DataError(f"MRNet root not found: {root}{where}; set data.root to the folder holding train/ and valid/")
    read = {task: _read_labels(root / f"{split}-{task}.csv", on_error) for task in tasks}
    labels = {task: labels for task, (labels, _) in read.items()}
    bad = set().union(*(bad for _, bad in read.values()))
    listed = set().union(*(labels[t] for t in tasks)) | bad
    for sid in sorted(listed - bad):
        unlabelled = [f"{split}-{t}.csv" for t in tasks if sid not in labels[t]]
        if unlabelled:
            on_error(StudyError(sid, f"labelled in some label files but not in {unlabelled[0]}", str(root / unlabelled[0])))
            bad.add(sid)
    other = [s for s in MRNET_SPLITS if s != split and (root / f"{s}-{tasks[0]}.csv").is_file()]
    if other:
        other_ids, _ = _read_labels(root / f"{other[0]}-{tasks[0]}.csv", OnError("skip"))  # its own problems surface when it is read
        bad |= check_disjoint({split: listed, other[0]: other_ids}, on_error, str(root))
    absent = [plane for plane in planes if not (root / split / plane).is_dir()]
    if absent:
        present = sorted(p.name for p in (root / split).iterdir() if p.is_dir()) if (root / split).is_dir() else []
        raise DataError(
            f"no folder {root / split / absent[0]} for the plane '{absent[0]}' of data.modalities; "
            f"{root / split} holds {present or 'no folders'}"
        )
    manifest = []
    for sid in sorted(listed - bad):
        paths = {plane: root / split / plane / f"{sid}.npy" for plane in planes}
        missing = [plane for plane, path in paths.items() if not path.is_file()]
        if missing:
            on_error(StudyError(sid, f"missing {missing[0]} file", str(paths[missing[0]])))
            continue
        item: dict = {"id": sid, **{plane: str(path) for plane, path in paths.items()}}
        item["label"] = np.array([labels[t][sid] for t in tasks], dtype=np.float32)
        manifest.append(item)
    for plane in planes:
        for path in sorted((root / split / plane).glob("*.npy")):
            if path.stem not in listed:
                on_error(StudyError(path.stem, f"has a file in {plane}/ but no label in {split}-{tasks[0]}.csv", str(path)))
    return manifest


def read_mrnet(
    root: str | Path,
    split: str,
    planes: Sequence[str],
    tasks: Sequence[str],
    val_fraction: Optional[float] = None,
    seed: int = 0,
    on_error: Optional[OnError] = None,
) -> list[dict]:
    """`train`/`valid` as MRNet ships them; with `val_fraction`, as papers on MRNet do: `valid` is a
    stratified, seeded fraction of MRNet's train (by exam, on the label tuple), `train` the rest,
    and `test` is MRNet's valid."""
    if val_fraction is None:
        if split not in MRNET_SPLITS:
            raise DataError(
                f"the MRNet layout has splits 'train' and 'valid', not {split!r}; set data.val_fraction to use MRNet's valid as test"
            )
        return read_mrnet_manifest(root, split, planes, tasks, on_error)
    if split == "test":
        return read_mrnet_manifest(root, "valid", planes, tasks, on_error)
    if split not in MRNET_SPLITS:
        raise DataError(f"with data.val_fraction the MRNet splits are 'train', 'valid' and 'test', not {split!r}")
    manifest = read_mrnet_manifest(root, "train", planes, tasks, on_error)
    ids = [item["id"] for item in manifest]
    held_out = stratified_holdout(ids, ["".join(str(int(v)) for v in item["label"]) for item in manifest], val_fraction, seed)
    return [item for item in manifest if (item["id"] in held_out) == (split == "valid")]


def _holds_nifti_patients(root: Path) -> bool:
    """Whether `root` looks like the nifti layout: labels.csv, or a folder holding .nii/.nii.gz files."""
    if (root / "labels.csv").is_file():
        return True
    folders = (p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    return any(f.name.endswith((".nii", ".nii.gz")) for folder in folders for f in folder.iterdir())


def _check_unlabelled_folder(root: Path, planes: Sequence[str]) -> None:
    """One clear `DataError` for a folder that is not MRNet studies without labels."""
    label_files = sorted(p.name for pattern in ("train-*.csv", "valid-*.csv") for p in root.glob(pattern))
    if label_files:
        raise DataError(
            f"data.unlabelled_root {root} holds label files ({', '.join(label_files)}), so it is labelled data; "
            f"point data.unlabelled_root at studies without labels (train/{{plane}}/NNNN.npy only) or move the label files out"
        )
    if not (root / "train").is_dir():
        if _holds_nifti_patients(root):
            raise DataError(
                f"data.unlabelled_root {root} holds patient folders of NIfTI files (the nifti layout) but data.format is mrnet; "
                f"point it at a folder in the MRNet layout ({root}/train/{{plane}}/NNNN.npy) or set data.format=nifti"
            )
        held = sorted(p.name for p in root.iterdir() if not p.name.startswith("."))
        raise DataError(
            f"data.unlabelled_root {root} has no train/ folder (it holds {held or 'nothing'}); studies without labels in the "
            f"MRNet layout are {root}/train/{{plane}}/NNNN.npy for the planes of data.modalities {list(planes)}"
        )
    absent = [plane for plane in planes if not (root / "train" / plane).is_dir()]
    if absent:
        present = sorted(p.name for p in (root / "train").iterdir() if p.is_dir())
        raise DataError(
            f"data.unlabelled_root has no folder {root / 'train' / absent[0]} for the plane '{absent[0]}' of data.modalities; "
            f"{root / 'train'} holds the planes {present or 'none'}: the unlabelled studies need every plane of data.modalities"
        )


def read_mrnet_unlabelled(
    root: str | Path, planes: Sequence[str], tasks: Sequence[str], on_error: Optional[OnError] = None
) -> list[dict]:
    """One dict per exam of `{root}/train/{plane}/NNNN.npy` (no label files): `id` (the file name),
    one `.npy` path per plane, and `label`: NaN per task, a placeholder of the labelled items' shape
    and type (so batches collate), never a training target.

    An exam without a file for every plane is a `StudyError`, raised or (skip) recorded by `on_error`.
    """
    on_error = on_error or OnError()
    root = unlabelled_folder(root, "train/{plane}/NNNN.npy")
    _check_unlabelled_folder(root, planes)
    ids = sorted({path.stem for plane in planes for path in (root / "train" / plane).glob("*.npy")})
    if not ids:
        raise DataError(f"data.unlabelled_root {root} holds no studies: no .npy files in train/{{{','.join(planes)}}}/")
    manifest = []
    for sid in ids:
        paths = {plane: root / "train" / plane / f"{sid}.npy" for plane in planes}
        missing = [plane for plane, path in paths.items() if not path.is_file()]
        if missing:
            on_error(StudyError(sid, f"missing {missing[0]} file (an unlabelled study needs one per plane)", str(paths[missing[0]])))
            continue
        label = np.full(len(tasks), np.nan, dtype=np.float32)
        manifest.append({"id": sid, **{plane: str(path) for plane, path in paths.items()}, "label": label})
    return manifest
