"""Batching stacks of different slice counts: pad to the batch maximum and build the mask."""

from __future__ import annotations

from typing import Sequence

import torch


def pad_collate(batch: Sequence[dict], modalities: Sequence[str]) -> dict:
    """Items with one (S_m, H, W) tensor per modality -> `x` (B, M, S_max, H, W), `mask` (B, M, S_max).

    A modality absent from an item (None) stays all-False in the mask.
    """
    stacks = [[item[m] for m in modalities] for item in batch]
    present = [s for item in stacks for s in item if s is not None]
    if not present:
        raise ValueError("cannot collate a batch in which every modality of every study is missing")
    h, w = present[0].shape[-2:]
    s_max = max(s.shape[0] for s in present)
    x = torch.zeros(len(batch), len(modalities), s_max, h, w, dtype=torch.float32)
    mask = torch.zeros(len(batch), len(modalities), s_max, dtype=torch.bool)
    for b, item in enumerate(stacks):
        for m, stack in enumerate(item):
            if stack is None:
                continue
            if stack.shape[-2:] != (h, w):
                raise ValueError(f"study {batch[b]['id']}: {modalities[m]} slices are {tuple(stack.shape[-2:])}, others {(h, w)}")
            x[b, m, : stack.shape[0]] = torch.as_tensor(stack, dtype=torch.float32)
            mask[b, m, : stack.shape[0]] = True
    out = {"x": x, "mask": mask, "id": [item["id"] for item in batch]}
    if "label" in batch[0]:
        out["label"] = torch.stack([torch.as_tensor(item["label"]) for item in batch])
    return out
