"""Check the data before training: statistics per split and modality, montages of preprocessed studies.

`transmed inspect` runs `inspect`: it prints studies per split, label balance, and slice counts and voxel spacings per modality (from
the file headers). For the first N studies it writes `{out}/{study_id}.png`: one row per modality,
one column per slice, after preprocessing and without augmentation; `--save-arrays` adds
`{out}/{study_id}.npy`, float32 (M, S, H, W), exactly what the model receives.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import nibabel as nib
import numpy as np
import pydicom
from matplotlib.figure import Figure
from omegaconf import DictConfig

from .collate import pad_collate
from .datasets import LabelSpec, Manifest, label_spec, preprocessing, read_manifest, skipped_studies
from .nifti import read_labels
from .screening import OnError, catch_study_error

MAX_COLUMNS = 24  # longer stacks show evenly spaced slices


def _ras_grid(shape: Sequence[int], affine: np.ndarray) -> tuple[tuple[int, ...], tuple[float, ...]]:
    """Shape and spacing reordered to RAS axes (x, y, z), as `Orientationd("RAS")` will see them."""
    order = nib.orientations.io_orientation(affine)[:, 0].astype(int)  # array axis i lies along RAS axis order[i]
    spacing = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    ras_shape, ras_spacing = [0, 0, 0], [0.0, 0.0, 0.0]
    for axis, ras in enumerate(order):
        ras_shape[ras], ras_spacing[ras] = int(shape[axis]), float(spacing[axis])
    return tuple(ras_shape), tuple(ras_spacing)


def _dicom_affine(folder: Path) -> tuple[tuple[int, ...], np.ndarray]:
    """Shape (rows, columns, slices) and RAS affine of a DICOM series from its headers alone."""
    headers = [pydicom.dcmread(p, stop_before_pixels=True) for p in sorted(folder.iterdir()) if p.is_file() and not p.name.startswith(".")]
    row_dir, col_dir = np.array(headers[0].ImageOrientationPatient[:3], float), np.array(headers[0].ImageOrientationPatient[3:], float)
    normal = np.cross(row_dir, col_dir)
    positions = sorted(float(np.dot(normal, np.array(h.ImagePositionPatient, float))) for h in headers)
    step = float(np.median(np.diff(positions))) if len(positions) > 1 else float(getattr(headers[0], "SliceThickness", 1.0))
    dr, dc = (float(v) for v in headers[0].PixelSpacing)
    affine = np.eye(4)
    affine[:3, :3] = np.stack([col_dir * dr, row_dir * dc, normal * step], axis=1)
    return (int(headers[0].Rows), int(headers[0].Columns), len(headers)), np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine  # LPS -> RAS


def describe_file(path: str | Path) -> tuple[tuple[int, ...], Optional[tuple[float, ...]]]:
    """(shape, spacing) from the header: RAS-ordered for NIfTI and DICOM; (S, H, W) and no spacing for .npy."""
    path = Path(path)
    if path.suffix == ".npy":
        return tuple(np.load(path, mmap_mode="r").shape), None
    if path.is_dir():
        shape, affine = _dicom_affine(path)
    else:
        image = nib.load(path)
        shape, affine = image.shape[:3], image.affine
    return _ras_grid(shape, affine)


def _label_text(label: np.ndarray | int, spec: LabelSpec) -> str:
    if spec.kind == "multiclass":
        return spec.names[int(label)]
    return " ".join(f"{name}={int(v)}" for name, v in zip(spec.names, np.asarray(label)))


def splits_of(cfg: DictConfig) -> list[str]:
    d = cfg.data
    if d.format == "nifti":
        has_test = "split" in read_labels(d.root, d.label_column).columns
    else:
        has_test = d.val_fraction is not None
    return ["train", "valid"] + (["test"] if has_test else [])


def statistics(cfg: DictConfig, manifests: dict[str, Manifest], spec: LabelSpec) -> str:
    """Text report: studies and labels per split, slice counts and spacings per modality."""
    d = cfg.data
    lines = [f"data: {d.format} at {d.root}; modalities {list(d.modalities)}; {spec.kind} {list(spec.names)}", ""]
    lines.append(f"{'split':<8}{'studies':>8}  " + "  ".join(f"{n:>10}" for n in spec.names))
    for split, manifest in manifests.items():
        labels = [item["label"] for item in manifest]
        if spec.kind == "multiclass":
            counts = np.bincount(np.asarray(labels, dtype=int), minlength=spec.num_outputs) if labels else np.zeros(spec.num_outputs, int)
        else:
            counts = np.sum(labels, axis=0).astype(int) if labels else np.zeros(spec.num_outputs, int)
        lines.append(f"{split:<8}{len(manifest):>8}  " + "  ".join(f"{int(c):>10}" for c in counts))
    if spec.kind == "multilabel":
        lines.append("(label columns: studies positive for each task)")
    axis = d.slice_axis if d.format == "nifti" else 0
    lines += ["", f"{'modality':<12}{'studies':>8}  {'slices min/median/max':>22}  spacing mm (RAS x, y, z): median [min..max]"]
    for modality in d.modalities:
        grids = [describe_file(item[modality]) for manifest in manifests.values() for item in manifest]
        if not grids:
            continue
        slices = np.array([shape[axis] for shape, _ in grids])
        text = f"{modality:<12}{len(grids):>8}  {f'{slices.min()}/{int(np.median(slices))}/{slices.max()}':>22}  "
        spacings = np.array([s for _, s in grids if s is not None])
        if len(spacings):
            text += ", ".join(f"{np.median(c):.2f} [{c.min():.2f}..{c.max():.2f}]" for c in spacings.T)
        else:
            text += "n/a (arrays without a header)"
        lines.append(text)
    return "\n".join(lines)


def montage(stacks: dict[str, np.ndarray], title: str, path: Path) -> None:
    """Rows: modalities; columns: slices (evenly spaced when more than MAX_COLUMNS)."""
    depth = max(s.shape[0] for s in stacks.values())
    columns = np.unique(np.linspace(0, depth - 1, min(depth, MAX_COLUMNS)).round().astype(int))
    fig = Figure(figsize=(1.1 * len(columns) + 0.8, 1.2 * len(stacks) + 0.6))
    axes = fig.subplots(len(stacks), len(columns), squeeze=False)
    for row, (modality, stack) in enumerate(stacks.items()):
        for col, index in enumerate(columns):
            ax = axes[row, col]
            ax.set_xticks([])
            ax.set_yticks([])
            if index < stack.shape[0]:
                ax.imshow(stack[index], cmap="gray", vmin=0.0, vmax=1.0)
            else:  # this modality has fewer slices
                ax.set_frame_on(False)
            if row == 0:
                ax.set_title(str(index), fontsize=7)
            if col == 0:
                ax.set_ylabel(modality, fontsize=9)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def inspect(cfg: DictConfig, out: str | Path, n: int = 4, save_arrays: bool = False) -> list[Path]:
    """Prints the statistics and writes montages (and arrays) for the first `n` studies; returns the PNG paths."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    spec = label_spec(cfg)
    manifests = {split: read_manifest(cfg, split) for split in splits_of(cfg)}
    print(statistics(cfg, manifests, spec))
    on_error = OnError(cfg.data.on_error)
    transform, modalities, written = preprocessing(cfg), list(cfg.data.modalities), []
    studies = [(split, item) for split, manifest in manifests.items() for item in manifest]
    for split, item in studies:
        if len(written) >= n:
            break
        result, failure = catch_study_error(transform, dict(item))
        if failure is not None:
            on_error(failure)
            continue
        stacks = {m: result[m].numpy() for m in modalities}
        shapes = ", ".join(f"{m} {tuple(s.shape)}" for m, s in stacks.items())
        path = out / f"{item['id']}.png"
        montage(stacks, f"{item['id']} ({split}): {_label_text(item['label'], spec)}    [{shapes}]", path)
        written.append(path)
        if save_arrays:
            np.save(out / f"{item['id']}.npy", pad_collate([result], modalities)["x"][0].numpy())
    skipped = skipped_studies(*manifests.values(), on_error)
    if skipped:
        print(f"\nleft out under data.on_error=skip ({len(skipped)}):")
        for record in skipped:
            print(f"  {record['id']}: {record['reason']} ({record['file']})")
    print(f"\nwrote {len(written)} montage(s){' and arrays' if save_arrays else ''} to {out}")
    return written
