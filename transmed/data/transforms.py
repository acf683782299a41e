"""MONAI dictionary transforms shared by the formats: reading, checks, final tensors.

A format's preprocessing (deterministic, cacheable) ends in `finalize`: one plain (S, H, W) float
tensor per modality, intensities in [0, 1]. `CompactStacksd` then stores it in the cache's type
(`data.cache_dtype`), see its docstring for the rounding. Augmentation is `data/augment.py`'s
(in the loader: its `RandAugmentd`).
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Hashable, Mapping, Optional, Sequence

import numpy as np
import pydicom
import torch
from monai.data import ImageReader, NibabelReader, NumpyReader, PydicomReader
from monai.transforms import (
    Compose,
    EnsureChannelFirstd,
    EnsureTyped,
    LoadImage,
    MapTransform,
    Resized,
    ScaleIntensityd,
    SpatialPad,
    SqueezeDimd,
)

from ..core.errors import StudyError


def _last_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[-1] if text else type(err).__name__


def _reader_for(path: Path) -> ImageReader:
    """A fresh reader per file: MONAI's PydicomReader keeps per-read state, and caching runs in threads."""
    if path.is_dir() or path.suffix.lower() == ".dcm":
        return PydicomReader()
    if path.suffix.lower() == ".npy":
        return NumpyReader()
    return NibabelReader()


def _series_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))


def dicom_series_problem(folder: Path) -> Optional[tuple[str, str]]:
    """The first file of a DICOM series folder that cannot be stacked, and why (None: all fine).

    MONAI's reader only warns about such slices and stacks the rest; a silently shorter series
    is worse than an error, so `LoadStudyd` calls this when a series looks incomplete.
    """
    files = _series_files(folder)
    if not files:
        return str(folder), "the DICOM folder holds no files"
    for file in files:
        try:
            ds = pydicom.dcmread(file)
            ds.pixel_array  # noqa: B018 - decoding is the check
        except Exception as err:  # noqa: BLE001 - any pydicom failure is a bad slice
            return str(file), f"unreadable DICOM slice: {_last_line(err)}"
        if "InstanceNumber" not in ds:
            return str(file), "DICOM slice without InstanceNumber: its place in the series is unknown"
    return None


def mixed_series_problem(folder: Path) -> Optional[str]:
    """Why a DICOM folder cannot be one stack because it holds several series (None: one series).

    MONAI's reader stacks every file of a folder, so two series (a second echo, a localiser, a
    repeat) would interleave into one volume without a word.
    """
    series: dict[str, list[str]] = {}
    for file in _series_files(folder):
        try:
            ds = pydicom.dcmread(file, stop_before_pixels=True, specific_tags=["SeriesInstanceUID", "SeriesDescription"])
        except Exception:  # noqa: BLE001 - unreadable files are reported by the slice checks
            continue
        key = str(ds.get("SeriesInstanceUID", "")) or "(no SeriesInstanceUID)"
        series.setdefault(key, []).append(f"{file.name} ({ds.get('SeriesDescription', 'no description')})")
    if len(series) < 2:
        return None
    examples = "; ".join(f"{uid}: {len(files)} files, e.g. {files[0]}" for uid, files in series.items())
    return f"the DICOM folder mixes {len(series)} series ({examples}); keep one series per modality folder"


def numpy_problem(path: Path) -> Optional[str]:
    """numpy's own words on why a .npy file does not load (MONAI's reader reports a pickle setting instead)."""
    with open(path, "rb") as f:
        magic = f.read(6)
    if magic != b"\x93NUMPY":  # numpy would call any such file "pickled (object) data"
        return f"no .npy header (the file starts with {magic!r}, {path.stat().st_size} bytes): not a NumPy array file"
    try:
        np.load(path, allow_pickle=False, mmap_mode="r")
    except Exception as err:  # noqa: BLE001 - any numpy failure is the reason
        return _last_line(err)
    return None


class LoadStudyd(MapTransform):
    """Reads each modality (NIfTI, DICOM file or series folder, .npy), turning any failure into a `StudyError`."""

    def __init__(self, keys: Sequence[str], id_key: str = "id") -> None:
        super().__init__(keys)
        self.loader = LoadImage(image_only=True)
        self.id_key = id_key

    def _fail(self, sid: str, key: str, path: Path, reason: str) -> StudyError:
        found = dicom_series_problem(path) if path.is_dir() else None
        if path.suffix.lower() == ".npy":
            reason = f"not a readable .npy array: {numpy_problem(path) or reason}"
        file, why = found or (str(path), reason)
        return StudyError(sid, f"cannot read {key} file: {why}", file)

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        sid = str(d[self.id_key])
        for key in self.key_iterator(d):
            path = Path(d[key])
            try:
                image = self.loader(path, reader=_reader_for(path))
            except Exception as err:  # noqa: BLE001 - any reader failure is a bad file
                raise self._fail(sid, key, path, _last_line(err)) from None
            if path.is_dir():
                stacked = image.shape[-1] if image.dim() == 3 else 1
                expected = len(_series_files(path))
                if stacked != expected:
                    raise self._fail(sid, key, path, f"{expected} files in the series folder but {stacked} slices read")
                mixed = mixed_series_problem(path)
                if mixed:
                    raise StudyError(sid, f"cannot read {key} file: {mixed}", str(path))
            d[key] = image
            d.setdefault("files", {})[key] = str(path)  # not "{key}_...": MONAI takes such keys for meta dicts
        return d


class CheckStudyd(MapTransform):
    """Rejects stacks a model cannot use: not one 3D volume, non-finite voxels, a constant volume, too few slices.

    Expects channel-first arrays; slices lie along `slice_dim` (1: the first spatial axis).
    `when` is added to the reasons (for checks after resampling).
    """

    def __init__(self, keys: Sequence[str], min_slices: int = 1, slice_dim: int = 1, when: str = "", id_key: str = "id") -> None:
        super().__init__(keys)
        self.min_slices, self.slice_dim, self.id_key = min_slices, slice_dim, id_key
        self.when = f" {when}" if when else ""

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            arr = torch.as_tensor(d[key])
            sid, path, when = str(d[self.id_key]), d.get("files", {}).get(key), self.when
            if arr.dim() == 4 and arr.shape[0] > 1:
                raise StudyError(sid, f"{key} holds {arr.shape[0]} volumes (a 4D series){when}; expected one 3D volume", path)
            if arr.dim() != 4:
                raise StudyError(sid, f"{key} is not a 3D stack (spatial shape {tuple(arr.shape[1:])}){when}", path)
            if arr.shape[self.slice_dim] < self.min_slices:  # before the voxel checks: an empty stack has no max
                raise StudyError(
                    sid, f"{key} has {arr.shape[self.slice_dim]} slices{when}, fewer than the {self.min_slices} a slice group needs", path
                )
            if arr.numel() == 0:
                raise StudyError(sid, f"{key} holds no voxels (spatial shape {tuple(arr.shape[1:])}){when}", path)
            if not torch.isfinite(arr).all():
                raise StudyError(sid, f"{key} holds {int((~torch.isfinite(arr)).sum())} NaN or Inf voxels{when}", path)
            if arr.amax() == arr.amin():
                raise StudyError(sid, f"{key} is a constant volume (every voxel {float(arr.amax()):g}){when}", path)
        return d


class WarnNotSquared(MapTransform):
    """Warns, naming study and file, when a stack's slices are not square: resizing to a square stretches them."""

    def __init__(self, keys: Sequence[str], image_size: int, id_key: str = "id") -> None:
        super().__init__(keys)
        self.image_size, self.id_key = image_size, id_key

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        for key in self.key_iterator(data):
            h, w = data[key].shape[-2:]
            if h != w:
                warnings.warn(
                    f"study {data[self.id_key]} (file {data.get('files', {}).get(key)}): {key} slices are {h}x{w}, not square; "
                    f"they are stretched to {self.image_size}x{self.image_size}"
                )
        return dict(data)


class PadToSquared(MapTransform):
    """Pads the in-plane axes of (C, S, H, W) to a centred square, so resizing keeps the aspect ratio."""

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            side = max(d[key].shape[-2:])
            d[key] = SpatialPad((-1, side, side))(d[key])
        return d


def finalize(modalities: Sequence[str]) -> Compose:
    """(1, S, H, W) MetaTensor -> plain (S, H, W) float tensor; the last step of every preprocessing."""
    keys = list(modalities)
    return Compose([SqueezeDimd(keys, dim=0), EnsureTyped(keys, data_type="tensor", dtype=torch.float32, track_meta=False)])


def mrnet_preprocess(modalities: Sequence[str], image_size: int, num_slices: Optional[int], min_slices: int) -> Compose:
    """Deterministic: load .npy (s, H, W), check, scale to [0, 1], resize in-plane (and slices if asked)."""
    keys = list(modalities)
    return Compose(
        [
            LoadStudyd(keys),
            EnsureChannelFirstd(keys, channel_dim="no_channel"),
            CheckStudyd(keys, min_slices=min_slices),
            WarnNotSquared(keys, image_size),
            ScaleIntensityd(keys, minv=0.0, maxv=1.0),
            Resized(keys, spatial_size=(num_slices or -1, image_size, image_size), mode="trilinear", anti_aliasing=True),
            finalize(keys),
        ]
    )


class CompactStacksd(MapTransform):
    """Float (S, H, W) stacks in [0, 1] -> the cache's type; the last deterministic (cached) step.

    - uint8 (MRNet's own type): round(255 * v), clipped to 0..255; the model gets q / 255
      (`collate.to_float`). The intensities are scaled and resized in float first, and rounded
      once, here: each voxel differs from the float32 path by at most 0.5/255 = 1/510. Where the
      float32 value is already a multiple of 1/255 (a study spanning 0..255, not resized) the two
      paths are identical.
    - float16 (NIfTI, after the percentile normalisation and resampling): an absolute error of at
      most 2**-12 (half float16's spacing in [0.5, 1]), smaller below.
    - float32: unchanged (today's cache, 4 bytes a voxel).
    """

    def __init__(self, keys: Sequence[str], dtype: torch.dtype) -> None:
        super().__init__(keys, allow_missing_keys=True)
        if dtype not in (torch.uint8, torch.float16, torch.float32):
            raise ValueError(f"cannot cache stacks as {dtype}")
        self.dtype = dtype

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            stack = torch.as_tensor(d[key])
            if self.dtype == torch.uint8:
                d[key] = (stack.float() * 255.0).round_().clamp_(0, 255).to(torch.uint8)
            else:
                d[key] = stack.to(self.dtype)
        return d
