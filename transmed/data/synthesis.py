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
"""

from __future__ import annotations

import csv
import json
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


def _blob(shape: tuple[int, int, int], center: np.ndarray, radii: np.ndarray) -> np.ndarray:
    zz, yy, xx = np.ogrid[: shape[0], : shape[1], : shape[2]]
    d = ((zz - center[0]) / radii[0]) ** 2 + ((yy - center[1]) / radii[1]) ** 2 + ((xx - center[2]) / radii[2]) ** 2
    return np.exp(-2.0 * d)


def synthetic_volume(rng: np.random.Generator, labels: dict[str, int]) -> np.ndarray:
    """One (z, y, x) knee-like volume in [0, 1] with the lesions its labels call for."""
    n = _GRID
    shape = (n, n, n)
    c = n / 2 + rng.normal(0, 1.5, 3)
    volume = 0.25 * (_blob(shape, c, np.array([30, 27, 27]) * rng.uniform(0.9, 1.1, 3)) > 0.3)
    femur, tibia = c + np.array([-14, 0, 0]), c + np.array([14, 0, 0])
    volume += 0.35 * (_blob(shape, femur, np.array([12, 16, 16])) > 0.3)
    volume += 0.35 * (_blob(shape, tibia, np.array([12, 16, 16])) > 0.3)
    if labels["acl"]:
        volume += 0.6 * _blob(shape, c + rng.normal(0, 1.5, 3), rng.uniform(5.0, 7.0, 3))
    if labels["meniscus"]:
        side = rng.choice([-1, 1])
        center = c + np.array([0, rng.normal(0, 2), side * rng.uniform(10, 13)])
        volume -= 0.8 * _blob(shape, center, np.array([4.5, 8.0, 6.0]) * rng.uniform(0.9, 1.2, 3))
    if labels["other"]:
        bone = femur if rng.random() < 0.5 else tibia
        volume += 0.35 * _blob(shape, bone + rng.normal(0, 3, 3), rng.uniform(4.0, 6.0, 3))
    volume = ndimage.gaussian_filter(volume, 0.8) + rng.normal(0, 0.03, shape)
    return np.clip(volume, 0.0, 1.0)


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
) -> Path:
    """Writes `{root}/{train,valid}/{plane}/NNNN.npy` (uint8, (s, size, size)) and `{split}-{task}.csv`."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    study = 0
    for split, count in (("train", num_train), ("valid", num_valid)):
        for plane in PLANES:
            (root / split / plane).mkdir(parents=True, exist_ok=True)
        rows: dict[str, list[tuple[str, int]]] = {task: [] for task in TASKS}
        for _ in progress(range(count), desc=f"generate synthetic {split}", unit="studies"):
            sid = f"{study:04d}"
            labels = _sample_labels(rng)
            volume = synthetic_volume(rng, labels)
            for axis, plane in ((2, "sagittal"), (1, "coronal"), (0, "axial")):
                s = int(rng.integers(min_slices, max_slices + 1))
                np.save(root / split / plane / f"{sid}.npy", _stack(volume, axis, s, image_size))
            for task in TASKS:
                rows[task].append((sid, labels[task]))
            study += 1
        for task in TASKS:
            with open(root / f"{split}-{task}.csv", "w", newline="") as f:
                csv.writer(f).writerows(rows[task])
    settings = dict(
        num_train=num_train, num_valid=num_valid, image_size=image_size, min_slices=min_slices, max_slices=max_slices, seed=seed
    )
    (root / MARKER).write_text(json.dumps({"format": "mrnet", **settings}, indent=2) + "\n")  # last: marks a complete set
    return root


NIFTI_CLASSES = ("adenoma", "warthin", "malignant")
SEQUENCES = ("T1", "T2")
# (T1, T2) signal per tissue: glands are fatty (bright T1); the tumour types differ on T2 mostly
_SIGNAL = {"soft": (0.45, 0.35), "gland": (0.85, 0.5), "adenoma": (0.25, 1.0), "warthin": (0.4, 0.12), "malignant": (0.3, 0.7)}
_SCALE = {"T1": 600.0, "T2": 900.0}


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


def parotid_phantom(rng: np.random.Generator, label: str) -> Callable[[np.ndarray, str], np.ndarray]:
    """A head-and-neck section with two parotid glands and a tumour of class `label` in one of them.

    Returns `signal(points, sequence)`: noiseless intensity in [0, 1] at world points (..., 3).
    """
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
        return value + tumour * (_SIGNAL[label][k] - value)

    return signal


def write_sequence(path: Path, signal: np.ndarray, affine: np.ndarray, sequence: str, rng: np.random.Generator) -> None:
    """Scanner-like file: Rician-like noise, T1 as float32, T2 as int16."""
    noisy = np.abs(signal + rng.normal(0, 0.03, signal.shape)) * _SCALE[sequence]
    data = noisy.astype(np.float32) if sequence == "T1" else noisy.round().astype(np.int16)
    nib.save(nib.Nifti1Image(data, affine), path)


def generate_nifti(root: str | Path, num_studies: int = 30, with_split: bool = False, seed: int = 0) -> Path:
    """Writes `{root}/{pid}/{T1,T2}.nii.gz` and `{root}/labels.csv` (`patient_id,label[,split]`).

    Classes are balanced; with `with_split` every class is spread 60/20/20 over train/valid/test.
    """
    root = Path(root)
    rng = np.random.default_rng(seed)
    labels = [NIFTI_CLASSES[i % len(NIFTI_CLASSES)] for i in rng.permutation(num_studies)]
    rows = []
    seen: dict[str, int] = {}
    for index, label in enumerate(progress(labels, desc="generate synthetic NIfTI studies", unit="studies")):
        pid = f"P{index:03d}"
        (root / pid).mkdir(parents=True, exist_ok=True)
        signal = parotid_phantom(rng, label)
        for sequence, (shape, affine) in sequence_grids(rng).items():
            write_sequence(root / pid / f"{sequence}.nii.gz", signal(world_points(shape, affine), sequence), affine, sequence, rng)
        rank = seen[label] = seen.get(label, -1) + 1
        rows.append([pid, label] + ([("train", "train", "train", "valid", "test")[rank % 5]] if with_split else []))
    with open(root / "labels.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["patient_id", "label"] + (["split"] if with_split else []))
        writer.writerows(rows)
    return root
