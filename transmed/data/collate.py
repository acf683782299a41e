"""Batching stacks of different slice counts: pad to the batch maximum and build the mask; the batch onto the device.

Batches keep the cache's type (`data.cache_dtype`): uint8 (intensity * 255) or float16 travel to
the device at 1 or 2 bytes a voxel, and `to_device` makes the model's float32 input there. Every
place that feeds a batch to a model goes through `to_device`.
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence

import torch

from ..core.errors import StudyError

UINT8_SCALE = 255.0  # a uint8 cache holds round(255 * intensity), intensity in [0, 1]
STORED_DTYPES = (torch.uint8, torch.float16, torch.float32)  # what batches carry; other types become float32


def to_float(x: torch.Tensor) -> torch.Tensor:
    """Model input from a stored batch or stack: uint8 -> float32 / 255; float16 (or other floats) -> float32."""
    if x.dtype == torch.uint8:
        return x.float() / UINT8_SCALE
    if not x.is_floating_point():
        raise TypeError(f"image tensors are uint8 or floating point, got {x.dtype}")
    return x.float()


def to_device(
    batch: dict, device: torch.device | str, augment: Optional[Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """A collated batch -> (x float32 in [0, 1], mask), both on `device`.

    The batch crosses to the device in its stored type; the float conversion happens there. With
    `augment` (the trainer's `augment.BatchAugment`), the augmentation makes the float batch from the
    stored one itself, so a compact batch is read once.
    """
    x = batch["x"].to(device, non_blocking=True)
    mask = batch["mask"].to(device, non_blocking=True)
    return (to_float(x) if augment is None else augment(x, mask)), mask


def pad_collate(batch: Sequence[dict], modalities: Sequence[str]) -> dict:
    """Items with one (S_m, H, W) tensor per modality -> `x` (B, M, S_max, H, W), `mask` (B, M, S_max).

    `x` keeps the stacks' type (uint8, float16 or float32; stacks of mixed types become float32 in
    [0, 1] through `to_float`); padding is 0.
    A modality absent from an item (None) stays all-False in the mask.
    """
    stacks = [[item[m] for m in modalities] for item in batch]
    present = [s for item in stacks for s in item if s is not None]
    if not present:
        raise ValueError("cannot collate a batch in which every modality of every study is missing")
    h, w = present[0].shape[-2:]
    s_max = max(s.shape[0] for s in present)
    dtypes = {torch.as_tensor(s).dtype for s in present}
    dtype = dtypes.pop() if len(dtypes) == 1 else torch.float32
    if dtype not in STORED_DTYPES:
        dtype = torch.float32
    x = torch.zeros(len(batch), len(modalities), s_max, h, w, dtype=dtype)
    mask = torch.zeros(len(batch), len(modalities), s_max, dtype=torch.bool)
    for b, item in enumerate(stacks):
        for m, stack in enumerate(item):
            if stack is None:
                continue
            if stack.shape[-2:] != (h, w):
                raise StudyError(
                    str(batch[b]["id"]),
                    f"{modalities[m]} slices are {tuple(stack.shape[-2:])}, the batch's others {(h, w)}; the stacks of a batch "
                    "must share one slice size (the preprocessing resizes them to data.image_size)",
                )
            stack = torch.as_tensor(stack)
            x[b, m, : stack.shape[0]] = stack if stack.dtype == dtype else stack.float() if stack.dtype != torch.uint8 else to_float(stack)
            mask[b, m, : stack.shape[0]] = True
    out = {"x": x, "mask": mask, "id": [item["id"] for item in batch]}
    if "label" in batch[0]:
        out["label"] = torch.stack([torch.as_tensor(item["label"]) for item in batch])
    if "pseudo" in batch[0]:  # train.semi: which studies carry pseudo-labels
        out["pseudo"] = torch.tensor([bool(item["pseudo"]) for item in batch])
    return out
