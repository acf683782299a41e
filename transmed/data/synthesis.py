"""Synthetic knee studies written in the real MRNet layout, so every command runs without the dataset.

Each study is one 3D volume (a knee-like ellipsoid with two bones, a joint space and noise) in
which lesions are placed; the sagittal, coronal and axial stacks are slices of that same volume
along its three axes, so a lesion shows consistently in all planes. Labels follow the lesions:
- acl: a bright blob near the centre of the joint (intercondylar notch);
- meniscus: a dark flat blob at the joint line, off-centre;
- abnormal: any lesion, including an "other" one (a medium-bright blob in bone).
Slice counts differ per plane and per study, as in MRNet.

`generate_nifti` writes parotid-like T1/T2 studies in the generic `nifti` layout. Each sequence
samples one analytic 3D phantom on its own scanner grid (spacing, shape, slice count, origin,
axis direction and a small rotation all differ), exactly as two real acquisitions of one patient
do; the tumour class shows in the lesion's T1/T2 signal and shape.

With `fusion=True` both generators write sets whose labels no single modality can give, and
`fusion_bound.json` beside them: the best AUC a model that sees one modality can reach.
- knee (MRNet layout): the three labels are independent and each lesion is drawn in one plane's
  stack only (acl: sagittal, meniscus: coronal, abnormal: axial, `FUSION_PLANES`); the other two
  stacks of that study show the same knee without it (each plane has its own noise, as separate
  acquisitions do). One plane reads its own task perfectly at best (AUC 1) and the other two not
  at all (their labels are independent of its images: AUC 0.5), so the best single-plane mean AUC
  is (1 + 0.5 + 0.5) / 3 = 2/3.
- parotid (NIfTI): four tumour types on a 2 x 2 design of T1 and T2 signal (`FUSION_SIGNAL`),
  one lesion shape for all: adenoma and warthin look alike on T1 and differ on T2, lipoma and
  cyst likewise, and on T2 adenoma pairs with lipoma, warthin with cyst. T1 alone tells only the
  pair: the best one-vs-rest score for a class is 1/2 inside its pair and 0 outside, so the class
  beats the other pair's studies and ties with its pair-mate: AUC = (n_other + n_mate / 2) /
  (n_other + n_mate), 5/6 with balanced classes, the macro AUC bound for T1 and for T2 alike.
The bounds are computed on the written labels of every split (a split's exact value) and for the
population; a real model can only do worse.

With `num_unlabelled=N` both generators also write N studies of the same distribution (and the
same `fusion` setting) without labels into `{root}/unlabelled/`, in the same layout (MRNet:
`unlabelled/train/{plane}/NNNN.npy`, no label files; NIfTI: `unlabelled/{pid}/{T1,T2}.nii.gz`, no
labels.csv), for `data.unlabelled_root`. Their ids continue the labelled ones', and they draw from
their own random stream, so the labelled studies are the same whatever N is. The generator's
labels of them are in `unlabelled/synthetic_truth.json` (`TRUTH_FILE`), which is read only to
score pseudo-labels, never to train.
"""

from __future__ import annotations

import csv
import json
from functools import partial
from pathlib import Path
from typing import Callable

import nibabel as nib
import numpy as np
from scipy import ndimage

from ..core.progress import progress

PLANES = ("sagittal", "coronal", "axial")
TASKS = ("abnormal", "acl", "meniscus")
_GRID = 64  # resolution of the underlying 3D volume
MARKER = "SYNTHETIC"  # written last by generate_mrnet: the settings it was made with (JSON)
UNLABELLED_DIR = "unlabelled"  # {root}/unlabelled/: the studies written without labels (`num_unlabelled`)
TRUTH_FILE = "synthetic_truth.json"  # in UNLABELLED_DIR: the generator's labels of those studies
TRUTH_NOTE = (
    "the synthetic generator's true labels of these unlabelled studies; TransMed reads this file only to score "
    "pseudo-labels, never to train"
)
UNLABELLED_STREAM = 0x756E6C62  # with the seed, the unlabelled studies' own random stream, apart from the labelled ones'


def _blob(shape: tuple[int, int, int], center: np.ndarray, radii: np.ndarray) -> np.ndarray:
    zz, yy, xx = np.ogrid[: shape[0], : shape[1], : shape[2]]
    d = ((zz - center[0]) / radii[0]) ** 2 + ((yy - center[1]) / radii[1]) ** 2 + ((xx - center[2]) / radii[2]) ** 2
    return np.exp(-2.0 * d)


class _Knee:
    """The anatomy of one knee-like volume (noiseless) and the lesions that can be placed in it."""

    shape = (_GRID, _GRID, _GRID)

    def __init__(self, rng: np.random.Generator) -> None:
        self.c = c = _GRID / 2 + rng.normal(0, 1.5, 3)
        self.anatomy = 0.25 * (_blob(self.shape, c, np.array([30, 27, 27]) * rng.uniform(0.9, 1.1, 3)) > 0.3)
        self.femur, self.tibia = c + np.array([-14, 0, 0]), c + np.array([14, 0, 0])
        self.anatomy += 0.35 * (_blob(self.shape, self.femur, np.array([12, 16, 16])) > 0.3)
        self.anatomy += 0.35 * (_blob(self.shape, self.tibia, np.array([12, 16, 16])) > 0.3)

    def lesion(self, kind: str, rng: np.random.Generator) -> np.ndarray:
        """acl: a bright blob in the intercondylar notch; meniscus: a dark flat blob at the joint line,
        off-centre; other: a medium-bright blob in bone."""
        shape = self.shape
        if kind == "acl":
            return 0.6 * _blob(shape, self.c + rng.normal(0, 1.5, 3), rng.uniform(5.0, 7.0, 3))
        if kind == "meniscus":
            side = rng.choice([-1, 1])
            center = self.c + np.array([0, rng.normal(0, 2), side * rng.uniform(10, 13)])
            return -0.8 * _blob(shape, center, np.array([4.5, 8.0, 6.0]) * rng.uniform(0.9, 1.2, 3))
        bone = self.femur if rng.random() < 0.5 else self.tibia
        return 0.35 * _blob(shape, bone + rng.normal(0, 3, 3), rng.uniform(4.0, 6.0, 3))

    def scan(self, volume: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Blur and noise of one acquisition, clipped to [0, 1]."""
        return np.clip(ndimage.gaussian_filter(volume, 0.8) + rng.normal(0, 0.03, self.shape), 0.0, 1.0)


def synthetic_volume(rng: np.random.Generator, labels: dict[str, int]) -> np.ndarray:
    """One (z, y, x) knee-like volume in [0, 1] with the lesions its labels call for."""
    knee = _Knee(rng)
    volume = knee.anatomy
    for kind in ("acl", "meniscus", "other"):
        if labels[kind]:
            volume = volume + knee.lesion(kind, rng)
    return knee.scan(volume, rng)


# fusion sets: the one plane whose stack shows each task's lesion (abnormal: the "other" lesion)
FUSION_PLANES = {"acl": "sagittal", "meniscus": "coronal", "abnormal": "axial"}
FUSION_PREVALENCE = 0.4  # each fusion label, independently of the others
BOUND_FILE = "fusion_bound.json"


def fusion_volumes(rng: np.random.Generator, labels: dict[str, int]) -> dict[str, np.ndarray]:
    """One knee, one volume per plane: each holds only the lesion of the task `FUSION_PLANES` gives that plane.

    Every plane draws from its own generator, so a plane's volume is the same whatever the other
    planes' labels are (by construction, not only in distribution).
    """
    knee = _Knee(rng)
    volumes = {}
    for (task, plane), plane_rng in zip(FUSION_PLANES.items(), rng.spawn(len(FUSION_PLANES))):
        lesion = knee.lesion("other" if task == "abnormal" else task, plane_rng) if labels[task] else 0.0
        volumes[plane] = knee.scan(knee.anatomy + lesion, plane_rng)
    return volumes


def _sample_fusion_labels(rng: np.random.Generator) -> dict[str, int]:
    return {task: int(rng.random() < FUSION_PREVALENCE) for task in TASKS}


def _sample_labels(rng: np.random.Generator) -> dict[str, int]:
    acl = int(rng.random() < 0.3)
    meniscus = int(rng.random() < 0.35)
    other = int(rng.random() < 0.35)
    return {"abnormal": int(acl or meniscus or other), "acl": acl, "meniscus": meniscus, "other": other}


def _stack(volume: np.ndarray, axis: int, num_slices: int, image_size: int) -> np.ndarray:
    """`num_slices` evenly spaced slices across the central 70% of `axis`, resized to image_size^2, uint8."""
    n = volume.shape[axis]
    positions = np.linspace(0.15 * n, 0.85 * n - 1, num_slices).round().astype(int)
    slices = np.moveaxis(volume, axis, 0)[positions]
    zoom = image_size / slices.shape[1]
    resized = ndimage.zoom(slices, (1, zoom, zoom), order=1)
    return (np.clip(resized, 0, 1) * 255).round().astype(np.uint8)


def generate_mrnet(
    root: str | Path,
    num_train: int = 120,
    num_valid: int = 60,
    image_size: int = 256,
    min_slices: int = 16,
    max_slices: int = 32,
    seed: int = 0,
    fusion: bool = False,
    num_unlabelled: int = 0,
) -> Path:
    """Writes `{root}/{train,valid}/{plane}/NNNN.npy` (uint8, (s, size, size)) and `{split}-{task}.csv`.

    `fusion`: each task's lesion in one plane only, and `fusion_bound.json` (see the module docstring).
    `num_unlabelled`: also `{root}/unlabelled/train/{plane}/NNNN.npy` and `unlabelled/synthetic_truth.json`
    (`{"note": ..., "labels": {id: {task: 0 or 1}}}`); the marker records it when it is not 0.
    """
    root = Path(root)
    rng = np.random.default_rng(seed)
    write = partial(_write_knee, fusion=fusion, image_size=image_size, min_slices=min_slices, max_slices=max_slices)
    study = 0
    all_labels: dict[str, np.ndarray] = {}
    for split, count in (("train", num_train), ("valid", num_valid)):
        for plane in PLANES:
            (root / split / plane).mkdir(parents=True, exist_ok=True)
        rows: dict[str, list[tuple[str, int]]] = {task: [] for task in TASKS}
        for _ in progress(range(count), desc=f"generate synthetic {split}", unit="studies"):
            sid = f"{study:04d}"
            labels = write(root / split, sid, rng)
            for task in TASKS:
                rows[task].append((sid, labels[task]))
            study += 1
        for task in TASKS:
            with open(root / f"{split}-{task}.csv", "w", newline="") as f:
                csv.writer(f).writerows(rows[task])
        all_labels[split] = np.array([[label for _, label in rows[task]] for task in TASKS]).T
    settings = dict(
        num_train=num_train, num_valid=num_valid, image_size=image_size, min_slices=min_slices, max_slices=max_slices, seed=seed
    )
    if fusion:
        _write_json(root / BOUND_FILE, knee_fusion_bound(all_labels))
        settings["fusion"] = True
    if num_unlabelled:
        folder, rng = root / UNLABELLED_DIR, _unlabelled_rng(seed)
        for plane in PLANES:
            (folder / "train" / plane).mkdir(parents=True, exist_ok=True)
        truth = {}
        for index in progress(range(num_unlabelled), desc="generate synthetic unlabelled", unit="studies"):
            sid = f"{study + index:04d}"
            labels = write(folder / "train", sid, rng)
            truth[sid] = {task: labels[task] for task in TASKS}
        _write_json(folder / TRUTH_FILE, {"note": TRUTH_NOTE, "labels": truth})
        settings["num_unlabelled"] = num_unlabelled
    (root / MARKER).write_text(json.dumps({"format": "mrnet", **settings}, indent=2) + "\n")  # last: marks a complete set
    return root


def _write_knee(folder: Path, sid: str, rng: np.random.Generator, fusion: bool, image_size: int, min_slices: int, max_slices: int) -> dict:
    """One knee study, `{folder}/{plane}/{sid}.npy` per plane; returns its labels (task -> 0 or 1)."""
    if fusion:
        labels = _sample_fusion_labels(rng)
        volumes = fusion_volumes(rng, labels)
    else:
        labels = _sample_labels(rng)
        volumes = dict.fromkeys(PLANES, synthetic_volume(rng, labels))
    for axis, plane in ((2, "sagittal"), (1, "coronal"), (0, "axial")):
        s = int(rng.integers(min_slices, max_slices + 1))
        np.save(folder / plane / f"{sid}.npy", _stack(volumes[plane], axis, s, image_size))
    return labels


def _unlabelled_rng(seed: int) -> np.random.Generator:
    """The unlabelled studies' generator: seeded apart from `default_rng(seed)` (and the children it spawns)."""
    return np.random.default_rng([seed, UNLABELLED_STREAM])


def _write_json(path: Path, content: dict) -> None:
    path.write_text(json.dumps(content, indent=2) + "\n")


def _single_plane_aucs(labels: np.ndarray, plane: str) -> dict[str, float]:
    """AUC per task of the best scorer that sees `plane` only: the label itself for the task the plane
    shows (1.0), a constant for the others (0.5); NaN where a split has one class only."""
    aucs = {}
    for k, task in enumerate(TASKS):
        defined = 0 < labels[:, k].sum() < len(labels)
        aucs[task] = (1.0 if FUSION_PLANES[task] == plane else 0.5) if defined else float("nan")
    finite = [v for v in aucs.values() if np.isfinite(v)]
    aucs["mean"] = float(np.mean(finite)) if finite else float("nan")
    return aucs


def knee_fusion_bound(labels: dict[str, np.ndarray]) -> dict:
    """The fusion knee set's bound: per split and plane, the best single-plane AUC per task and its mean."""
    population = {plane: _single_plane_aucs(np.array([[0, 0, 0], [1, 1, 1]]), plane) for plane in PLANES}
    return {
        "metric": "val/auc: the mean over tasks of the per-task AUC",
        "derivation": (
            "each task's lesion is drawn in one plane only (" + ", ".join(f"{t}: {p}" for t, p in FUSION_PLANES.items()) + ") "
            "and the labels are independent, so one plane reads its task perfectly at best (AUC 1) and the other two "
            "tasks not at all (AUC 0.5): mean AUC <= (1 + 0.5 + 0.5) / 3"
        ),
        "fusion_planes": FUSION_PLANES,
        "population": {"per_modality": population, "best_single_modality": max(v["mean"] for v in population.values())},
        "splits": {
            split: {
                "per_modality": (per := {plane: _single_plane_aucs(y, plane) for plane in PLANES}),
                "best_single_modality": max(v["mean"] for v in per.values()),
                "prevalence": dict(zip(TASKS, y.mean(axis=0).round(3).tolist())),
            }
            for split, y in labels.items()
        },
    }


NIFTI_CLASSES = ("adenoma", "warthin", "malignant")
SEQUENCES = ("T1", "T2")
# (T1, T2) signal per tissue: glands are fatty (bright T1); the tumour types differ on T2 mostly
_SIGNAL = {"soft": (0.45, 0.35), "gland": (0.85, 0.5), "adenoma": (0.25, 1.0), "warthin": (0.4, 0.12), "malignant": (0.3, 0.7)}
_SCALE = {"T1": 600.0, "T2": 900.0}
# fusion sets: a 2 x 2 design, (T1, T2) lesion signal per type; T1 pairs adenoma/warthin and
# lipoma/cyst, T2 pairs adenoma/lipoma and warthin/cyst (a low level darker than soft tissue, a high one brighter)
FUSION_CLASSES = ("adenoma", "warthin", "lipoma", "cyst")
FUSION_SIGNAL = {"adenoma": (0.2, 0.95), "warthin": (0.2, 0.12), "lipoma": (0.7, 0.95), "cyst": (0.7, 0.12)}


def grid_affine(
    shape: tuple[int, int, int], spacing: tuple[float, float, float], center: np.ndarray, angle_deg: float = 0.0, flip_x: bool = False
) -> np.ndarray:
    """Voxel -> world (RAS mm) affine of a grid centred on `center`, rotated about z, optionally stored right-to-left."""
    a = np.radians(angle_deg)
    rotation = np.array([[np.cos(a), -np.sin(a), 0.0], [np.sin(a), np.cos(a), 0.0], [0.0, 0.0, 1.0]])
    axes = rotation @ np.diag(np.array(spacing) * np.array([-1.0 if flip_x else 1.0, 1.0, 1.0]))
    affine = np.eye(4)
    affine[:3, :3] = axes
    affine[:3, 3] = center - axes @ ((np.array(shape) - 1) / 2)
    return affine


def sequence_grids(rng: np.random.Generator) -> dict[str, tuple[tuple[int, int, int], np.ndarray]]:
    """(shape, affine) per sequence: T1 2x2x4 mm axial, T2 coarser, fewer slices, shifted, LAS-stored and tilted."""
    jitter = rng.normal(0, 1.5, 3)
    return {
        "T1": ((40, 40, 18), grid_affine((40, 40, 18), (2.0, 2.0, 4.0), jitter)),
        "T2": ((32, 34, 12), grid_affine((32, 34, 12), (2.6, 2.4, 5.5), jitter + np.array([3.0, -4.0, 5.0]), angle_deg=5.0, flip_x=True)),
    }


def world_points(shape: tuple[int, int, int], affine: np.ndarray) -> np.ndarray:
    """World (RAS mm) coordinates of every voxel centre, shape (*shape, 3)."""
    ijk = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), axis=-1)
    return ijk @ affine[:3, :3].T + affine[:3, 3]


def _inside(points: np.ndarray, center: np.ndarray, radii: np.ndarray, sharpness: float = 8.0) -> np.ndarray:
    """Soft indicator of an ellipsoid (partial-volume edges)."""
    d = np.sqrt((((points - center) / radii) ** 2).sum(-1))
    return 1.0 / (1.0 + np.exp(-sharpness * (1.0 - d)))


def parotid_phantom(rng: np.random.Generator, label: str, fusion: bool = False) -> Callable[[np.ndarray, str], np.ndarray]:
    """A head-and-neck section with two parotid glands and a tumour of class `label` in one of them.

    `fusion`: `label` is one of `FUSION_CLASSES`, its signal `FUSION_SIGNAL`'s and every type one smooth ball.
    Returns `signal(points, sequence)`: noiseless intensity in [0, 1] at world points (..., 3).
    """
    table = FUSION_SIGNAL if fusion else _SIGNAL
    head = rng.normal(0, 1.0, 3)
    side = rng.choice([-1.0, 1.0])
    glands = [head + np.array([s * 22.0, -4.0, 0.0]) for s in (-1.0, 1.0)]
    gland_r = np.array([9.0, 12.0, 16.0]) * rng.uniform(0.9, 1.1, 3)
    lesion = glands[int(side > 0)] + rng.normal(0, 1.5, 3)
    radius = rng.uniform(5.0, 7.5)
    # malignant: lobulated (several overlapping blobs); benign types: one smooth ball
    lobes = [lesion + rng.normal(0, 3.0, 3) for _ in range(3)] if label == "malignant" else [lesion]

    def signal(points: np.ndarray, sequence: str) -> np.ndarray:
        k = SEQUENCES.index(sequence)
        soft = _inside(points, head, np.array([34.0, 38.0, 45.0]))
        gland = np.maximum(*[_inside(points, g, gland_r) for g in glands])
        tumour = np.max([_inside(points, c, np.full(3, radius * (0.8 if len(lobes) > 1 else 1.0))) for c in lobes], axis=0)
        value = soft * _SIGNAL["soft"][k]
        value += gland * (_SIGNAL["gland"][k] - _SIGNAL["soft"][k])
        return value + tumour * (table[label][k] - value)

    return signal


def write_sequence(path: Path, signal: np.ndarray, affine: np.ndarray, sequence: str, rng: np.random.Generator) -> None:
    """Scanner-like file: Rician-like noise, T1 as float32, T2 as int16."""
    noisy = np.abs(signal + rng.normal(0, 0.03, signal.shape)) * _SCALE[sequence]
    data = noisy.astype(np.float32) if sequence == "T1" else noisy.round().astype(np.int16)
    nib.save(nib.Nifti1Image(data, affine), path)


def generate_nifti(
    root: str | Path, num_studies: int = 30, with_split: bool = False, seed: int = 0, fusion: bool = False, num_unlabelled: int = 0
) -> Path:
    """Writes `{root}/{pid}/{T1,T2}.nii.gz` and `{root}/labels.csv` (`patient_id,label[,split]`).

    Classes are balanced; with `with_split` every class is spread 60/20/20 over train/valid/test.
    `fusion`: the four `FUSION_CLASSES` and `fusion_bound.json` (see the module docstring).
    `num_unlabelled`: also `{root}/unlabelled/{pid}/{T1,T2}.nii.gz` (balanced classes, no labels.csv) and
    `unlabelled/synthetic_truth.json` (`{"note": ..., "labels": {pid: class name}}`).
    """
    root = Path(root)
    rng = np.random.default_rng(seed)
    classes = FUSION_CLASSES if fusion else NIFTI_CLASSES
    labels = [classes[i % len(classes)] for i in rng.permutation(num_studies)]
    rows = []
    seen: dict[str, int] = {}
    for index, label in enumerate(progress(labels, desc="generate synthetic NIfTI studies", unit="studies")):
        pid = f"P{index:03d}"
        _write_parotid(root / pid, label, rng, fusion)
        rank = seen[label] = seen.get(label, -1) + 1
        rows.append([pid, label] + ([("train", "train", "train", "valid", "test")[rank % 5]] if with_split else []))
    with open(root / "labels.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["patient_id", "label"] + (["split"] if with_split else []))
        writer.writerows(rows)
    if fusion:
        splits = {"all": [row[1] for row in rows]}
        if with_split:
            splits.update({split: [row[1] for row in rows if row[2] == split] for split in ("train", "valid", "test")})
        _write_json(root / BOUND_FILE, parotid_fusion_bound(splits))
    if num_unlabelled:
        rng = _unlabelled_rng(seed)
        hidden = [classes[i % len(classes)] for i in rng.permutation(num_unlabelled)]
        truth = {}
        for index, label in enumerate(progress(hidden, desc="generate synthetic unlabelled NIfTI studies", unit="studies")):
            pid = f"P{num_studies + index:03d}"
            _write_parotid(root / UNLABELLED_DIR / pid, label, rng, fusion)
            truth[pid] = label
        _write_json(root / UNLABELLED_DIR / TRUTH_FILE, {"note": TRUTH_NOTE, "labels": truth})
    return root


def _write_parotid(folder: Path, label: str, rng: np.random.Generator, fusion: bool) -> None:
    """One parotid study of class `label`: `{folder}/{T1,T2}.nii.gz`, each on its own scanner grid."""
    folder.mkdir(parents=True, exist_ok=True)
    signal = parotid_phantom(rng, label, fusion)
    for sequence, (shape, affine) in sequence_grids(rng).items():
        write_sequence(folder / f"{sequence}.nii.gz", signal(world_points(shape, affine), sequence), affine, sequence, rng)


def _single_sequence_aucs(labels: list[str], sequence: str) -> dict[str, float]:
    """One-vs-rest AUC per class of the best scorer that sees `sequence` only: 1/2 for the two types
    with the class's level on it, 0 for the others (its pair-mate ties, the other pair ranks below)."""
    k = SEQUENCES.index(sequence)
    counts = {name: labels.count(name) for name in FUSION_CLASSES}
    aucs = {}
    for name in FUSION_CLASSES:
        mate = next(other for other in FUSION_CLASSES if other != name and FUSION_SIGNAL[other][k] == FUSION_SIGNAL[name][k])
        negatives = len(labels) - counts[name]
        others = negatives - counts[mate]
        aucs[name] = (others + counts[mate] / 2) / negatives if counts[name] and negatives else float("nan")
    finite = [v for v in aucs.values() if np.isfinite(v)]
    aucs["macro"] = float(np.mean(finite)) if finite else float("nan")
    return aucs


def parotid_fusion_bound(splits: dict[str, list[str]]) -> dict:
    """The fusion parotid set's bound: per split and sequence, the best single-sequence one-vs-rest AUC per class and its macro mean."""
    balanced = list(FUSION_CLASSES)
    population = {seq: _single_sequence_aucs(balanced, seq) for seq in SEQUENCES}
    return {
        "metric": "val/auc: the macro mean over classes of the one-vs-rest AUC",
        "derivation": (
            "types on a 2 x 2 design of T1 and T2 lesion signal, one lesion shape for all: one sequence tells only which pair "
            "a type is in, so a class ties with its pair-mate and ranks above the other pair: "
            "AUC = (n_other + n_mate / 2) / (n_other + n_mate), 5/6 with balanced classes"
        ),
        "signal": {name: dict(zip(SEQUENCES, FUSION_SIGNAL[name])) for name in FUSION_CLASSES},
        "population": {"per_modality": population, "best_single_modality": max(v["macro"] for v in population.values())},
        "splits": {
            split: {
                "per_modality": (per := {seq: _single_sequence_aucs(y, seq) for seq in SEQUENCES}),
                "best_single_modality": max(v["macro"] for v in per.values()),
                "counts": {name: y.count(name) for name in FUSION_CLASSES},
            }
            for split, y in splits.items()
        },
    }
