"""torchrun support: process group setup, rank-0-only side effects, gathering whole-split predictions."""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

from .inference import Predictions


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device_name: str) -> DistInfo:
    """Joins the process group torchrun describes (NCCL on GPU, gloo on CPU); a no-op without torchrun."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistInfo()
    use_cuda = torch.cuda.is_available() and device_name != "cpu"
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    info = DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))
    if use_cuda:
        torch.cuda.set_device(info.local_rank)
    return info


def device_for(info: DistInfo, device: torch.device) -> torch.device:
    return torch.device("cuda", info.local_rank) if info.enabled and device.type == "cuda" else device


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def mean_over_ranks(value: float, count: int, info: DistInfo) -> float:
    """Sample-weighted mean of a per-rank average."""
    if not info.enabled:
        return value
    t = torch.tensor([value * count, float(count)], dtype=torch.float64)
    dist.all_reduce(t)
    return float(t[0] / t[1])


def sync_buffers(model: torch.nn.Module, info: DistInfo) -> None:
    """Rank 0's BatchNorm statistics everywhere, so every rank validates the model rank 0 saves."""
    if info.enabled:
        for buffer in model.buffers():
            dist.broadcast(buffer, src=0)


def gather_predictions(preds: Predictions, info: DistInfo) -> Predictions:
    """Every rank's shard joined, duplicates (sampler padding) removed, ordered by study id."""
    if not info.enabled:
        return preds
    shards: list = [None] * info.world_size
    dist.all_gather_object(shards, preds)
    seen: dict[str, tuple[np.ndarray, np.ndarray, object]] = {}
    for shard in shards:
        for i, sid in enumerate(shard.ids):
            seen.setdefault(sid, (shard.logits[i], shard.probs[i], None if shard.labels is None else shard.labels[i]))
    ids = sorted(seen)
    labels = None if preds.labels is None else np.stack([seen[s][2] for s in ids])
    return Predictions(ids=ids, logits=np.stack([seen[s][0] for s in ids]), probs=np.stack([seen[s][1] for s in ids]), labels=labels)


def cleanup(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()
