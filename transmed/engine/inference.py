"""Running a model over a loader: logits, probabilities and labels for a whole split."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from ..data.datasets import LabelSpec
from .utils import autocast, eval_mode


@dataclass
class Predictions:
    ids: list[str]
    logits: np.ndarray  # (N, K)
    probs: np.ndarray  # (N, K)
    labels: Optional[np.ndarray]  # (N, K) multilabel or (N,) multiclass
    skipped: list[dict] = field(default_factory=list)  # studies data.on_error=skip left out: {id, file, reason}


def targets(labels: torch.Tensor, spec: LabelSpec, device: torch.device) -> torch.Tensor:
    labels = torch.as_tensor(labels).to(device)
    return labels.float() if spec.kind == "multilabel" else labels.long()


@torch.no_grad()
def predict(model: nn.Module, loader: DataLoader, spec: LabelSpec, device: torch.device, amp: bool = True) -> Predictions:
    """Logits and probabilities for every study of `loader`, in eval mode."""
    ids, logits, labels = [], [], []
    with eval_mode(model):
        for batch in loader:
            x, mask = batch["x"].to(device, non_blocking=True), batch["mask"].to(device, non_blocking=True)
            with autocast(device, amp):
                logits.append(model(x, mask).float().cpu())
            ids.extend(batch["id"])
            if "label" in batch:
                labels.append(batch["label"].numpy())
    all_logits = torch.cat(logits)
    return Predictions(
        ids=ids,
        logits=all_logits.numpy(),
        probs=spec.probabilities(all_logits).numpy(),
        labels=np.concatenate(labels) if labels else None,
    )


@torch.no_grad()
def split_loss(criterion: nn.Module, preds: Predictions, spec: LabelSpec) -> float:
    """The training criterion over a whole split at once."""
    device = next(criterion.buffers(), torch.empty(0)).device
    return float(criterion(torch.from_numpy(preds.logits).to(device), targets(preds.labels, spec, device)))
