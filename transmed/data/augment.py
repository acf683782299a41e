"""Training augmentation: the one definition, for the batch on the training device and for the loader.

`augment_batch` does the work; `augment_where` decides, from `data.augment` and `data.augment_on`, where it
runs: "device" wraps it in `BatchAugment` (the trainer's, on the batch as it reaches the device) and
"loader" in `RandAugmentd` (MONAI's way: a dictionary transform around the array transform, per study in
the loader workers). Per study, one random draw (`RANGES`):
- a left-right flip (p 0.5);
- an in-plane affine (p 0.7): rotation within +-10 degrees, scale 1 +- 0.1 per axis, shift within
  +-5% of the image size per axis, bilinear, zeros outside (as MONAI's `RandAffine`: the sampling
  grid is rotation(scale(p) + shift) around the image centre);
- then, on the float intensities, a scale by 1 +- 0.1 (p 0.5) and a shift by +-0.05 (p 0.5).
The draw is shared by every slice of every modality of the study (one `affine_grid`, one
`grid_sample` over its real slice images), so slices and modalities stay aligned; padded slices
(mask False) are returned exactly as they came. The random numbers come from a `torch.Generator`
(on the batch's device; in the loader, seeded from the transform's MONAI random state), so a run is
reproducible from (seed, epoch, rank) on any device.
"""

from __future__ import annotations

import math
from typing import Hashable, Mapping, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from monai.transforms import MapTransform, Randomizable

from .collate import UINT8_SCALE, to_float

RANGES = {
    "flip_prob": 0.5,  # left-right (the last axis)
    "affine_prob": 0.7,
    "rotate_degrees": 10.0,
    "scale": 0.1,  # factor 1 +- scale, drawn per axis
    "shift": 0.05,  # fraction of the image size, drawn per axis
    "intensity_scale_prob": 0.5,
    "intensity_scale": 0.1,  # x * (1 + uniform(-0.1, 0.1))
    "intensity_shift_prob": 0.5,
    "intensity_shift": 0.05,  # x + uniform(-0.05, 0.05)
}
_DRAWS = 11  # uniforms per study, a fixed layout: the stream does not depend on which branches fire


def augment_seed(epoch_seed: int, rank: int = 0) -> int:
    """The generator seed for one epoch on one rank, mixed apart from the data-order seed (`epoch_seed`)."""
    return int(np.random.SeedSequence([int(epoch_seed), int(rank), 0xA06]).generate_state(1, dtype=np.uint64)[0] >> 1)


def augment_generator(device: torch.device | str, epoch_seed: int, rank: int = 0) -> torch.Generator:
    """A generator on `device` seeded for (epoch seed, rank)."""
    return torch.Generator(device=torch.device(device)).manual_seed(augment_seed(epoch_seed, rank))


def sampling_grid(
    angle: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor, size: tuple[int, int], flip: Optional[torch.Tensor] = None
) -> torch.Tensor:
    """(B, H, W, 2) grid for `grid_sample` (align_corners=False) of per-study affines.

    angle (B,) radians; scale (B, 2) and shift (B, 2) in (row, column) order, shift in pixels. An
    output pixel at p (from the image centre) samples the input at rotation(scale * p + shift);
    with `flip` (B,) bool, the input left-right flipped first (so at its mirror image).
    """
    h, w = size
    cos, sin = torch.cos(angle), torch.sin(angle)
    # MONAI's rotation [[cos, -sin], [sin, cos]] in (row, column) order, written in (x = column, y = row) order
    rot = torch.stack([torch.stack([cos, sin], -1), torch.stack([-sin, cos], -1)], -2)  # (B, 2, 2)
    lin = rot * scale.flip(-1)[:, None, :]  # rot @ diag(scale_x, scale_y)
    trans = (rot @ shift.flip(-1)[:, :, None])[..., 0]
    to_norm = torch.tensor([2.0 / w, 2.0 / h], dtype=angle.dtype, device=angle.device)  # pixel -> [-1, 1] (align_corners=False)
    theta = torch.cat([lin * to_norm[:, None] / to_norm[None, :], (trans * to_norm)[..., None]], -1)  # (B, 2, 3)
    if flip is not None:  # x(mirror(q)): the column coordinate of the sampled point changes sign
        theta = torch.cat([torch.where(flip[:, None], -theta[:, :1], theta[:, :1]), theta[:, 1:]], 1)
    return F.affine_grid(theta, [len(angle), 1, h, w], align_corners=False)


def draw_params(batch_size: int, size: tuple[int, int], generator: Optional[torch.Generator] = None, device=None) -> dict:
    """One draw per study (`RANGES`): flip, affine (bool); angle (rad); scale, shift (pixels), (B, 2)
    in (row, column) order; gain, offset (1 and 0 where the intensity change did not fire)."""
    r, h, w = RANGES, *size
    u = torch.rand(batch_size, _DRAWS, generator=generator, device=device, dtype=torch.float32)
    sym = 2 * u - 1  # uniform(-1, 1)
    return {
        "flip": u[:, 0] < r["flip_prob"],
        "affine": u[:, 1] < r["affine_prob"],
        "angle": sym[:, 2] * math.radians(r["rotate_degrees"]),
        "scale": 1 + sym[:, 3:5] * r["scale"],
        "shift": sym[:, 5:7] * r["shift"] * torch.tensor([h, w], dtype=torch.float32, device=u.device),
        "gain": torch.where(u[:, 7] < r["intensity_scale_prob"], 1 + sym[:, 8] * r["intensity_scale"], torch.ones_like(u[:, 8])),
        "offset": torch.where(u[:, 9] < r["intensity_shift_prob"], sym[:, 10] * r["intensity_shift"], torch.zeros_like(u[:, 10])),
    }


def _warp(images: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    return F.grid_sample(images, grid.to(images.dtype), mode="bilinear", padding_mode="zeros", align_corners=False)


def _as_float(slices: torch.Tensor, gain: float) -> torch.Tensor:
    """(R, H, W) stored slices -> a new float32 tensor of intensity * gain (`collate.to_float`, the gain folded in)."""
    if slices.dtype == torch.uint8:
        return slices.float().mul_(gain / UINT8_SCALE)  # two vectorised passes; uint8 * float in one op is not vectorised
    return torch.mul(slices, gain) if slices.dtype == torch.float32 else to_float(slices).mul_(gain)  # to_float refuses ints


def apply_params(x: torch.Tensor, mask: torch.Tensor, params: dict) -> torch.Tensor:
    """x (B, M, S, H, W) as stored (uint8, float16 or float32) -> float32 with each study's drawn flip, affine and
    intensity change; padding converted (`collate.to_float`) but otherwise as it came.

    One study at a time, over its real slices only (a pass over the padded batch would cost memory
    bandwidth): its real slices (of every modality) are gathered into one stack, converted to float with
    the intensity gain folded in (the warp is linear and pads with zeros, so the gain commutes with it),
    warped by one `grid_sample` with the flip folded into its grid (or only flipped), offset in place and
    written back; padded slices are only converted. tests/test_augment.py keeps a whole-batch form (flip,
    warp, intensity as separate passes) as the reference this must equal up to rounding. On a GPU the
    batch's layout and draws are read to the host once, up front, so the loop queues work without
    waiting for the device.
    """
    b, m, s, h, w = x.shape
    out = torch.empty(x.shape, dtype=torch.float32, device=x.device)
    layout = mask.reshape(b, m * s).cpu()
    flips, affines = params["flip"].tolist(), params["affine"].tolist()
    gains, offsets = params["gain"].tolist(), params["offset"].tolist()
    for i in range(b):
        study, target = x[i].reshape(m * s, h, w), out[i].view(m * s, h, w)
        padded = (~layout[i]).nonzero()[:, 0]
        if len(padded):
            padded = padded.to(x.device, non_blocking=True)
            target.index_copy_(0, padded, to_float(study.index_select(0, padded)))  # padding: as it came, in float
        if len(padded) == m * s:
            continue
        keep = layout[i].nonzero()[:, 0].to(x.device, non_blocking=True)
        slices = study if not len(padded) else study.index_select(0, keep)  # (R, H, W): every modality's real slices
        if affines[i]:
            grid = sampling_grid(
                params["angle"][i : i + 1], params["scale"][i : i + 1], params["shift"][i : i + 1], (h, w), params["flip"][i : i + 1]
            )
            changed = _warp(_as_float(slices, gains[i])[None], grid)[0]
        else:
            changed = _as_float(slices.flip(-1) if flips[i] else slices, gains[i])
        if offsets[i] != 0:
            changed.add_(offsets[i])
        target.index_copy_(0, keep, changed)
    return out


def augment_batch(x: torch.Tensor, mask: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """x (B, M, S, H, W) as stored, mask (B, M, S) -> float32 x with one random spatial and intensity change per study.

    The float conversion (`collate.to_float`) is part of the augmentation, so a uint8 batch is read once. See the module
    docstring; padded slices come back converted but unchanged. Runs where `x` is (GPU or CPU); `generator` must live
    on that device.
    """
    return apply_params(x, mask, draw_params(x.shape[0], tuple(x.shape[-2:]), generator, x.device))


class BatchAugment:
    """`augment_batch` with its own generator on `device`, reseeded every epoch by the trainer."""

    def __init__(self, device: torch.device | str, epoch_seed: int = 0, rank: int = 0) -> None:
        self.device = torch.device(device)
        self.generator = augment_generator(self.device, epoch_seed, rank)

    def reseed(self, epoch_seed: int, rank: int = 0) -> None:
        self.generator.manual_seed(augment_seed(epoch_seed, rank))

    def __call__(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return augment_batch(x, mask, self.generator)


class RandAugmentd(Randomizable, MapTransform):
    """`augment_batch` as a MONAI dictionary transform, per study in the loader (`data.augment_on: loader`).

    The study's stacks (S_m, H, W) at `keys` (any stored type; a missing modality None) are augmented as
    one study, so one draw moves them all; they come back float32. The draw's generator is seeded from
    this transform's MONAI random state, which MONAI's loader reseeds per worker and the trainer per epoch.
    """

    def __init__(self, keys: Sequence[str]) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys=True)
        self.seed = 0

    def randomize(self, data: object = None) -> None:
        self.seed = int(self.R.randint(0, 2**31 - 1))

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        keys = [key for key in self.key_iterator(d) if d[key] is not None]
        self.randomize()
        if not keys:
            return d
        stacks = [torch.as_tensor(d[key]) for key in keys]
        if len({s.dtype for s in stacks}) > 1:
            stacks = [to_float(s) for s in stacks]
        x = torch.cat(stacks)[None, None]  # (1, 1, R, H, W): the study's slices, all real
        out = augment_batch(x, torch.ones(x.shape[:3], dtype=torch.bool), torch.Generator().manual_seed(self.seed))[0, 0]
        d.update(zip(keys, out.split([len(s) for s in stacks])))
        return d


def augment_where(cfg) -> Optional[str]:
    """The one decision: where training augmentation runs, "device" (`BatchAugment`, built by the trainer each
    epoch), "loader" (`RandAugmentd` in the training dataset's pipeline), or None (`data.augment: false`)."""
    return str(cfg.data.augment_on) if cfg.data.augment else None


def training_augment(cfg, device: torch.device | str, epoch_seed: int, rank: int = 0) -> Optional[BatchAugment]:
    """The trainer's batch augmentation for one epoch on one rank: a `BatchAugment` where `augment_where` says
    "device", else None (off, or done in the loader)."""
    return BatchAugment(device, epoch_seed, rank) if augment_where(cfg) == "device" else None
