"""Running a model over a loader: probabilities, labels and loss for a whole split."""

from __future__ import annotations

from dataclasses import dataclass
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
    probs: np.ndarray  # (N, K)
    labels: Optional[np.ndarray]  # (N, K) multilabel or (N,) multiclass
    loss: float


def targets(batch: dict, spec: LabelSpec, device: torch.device) -> torch.Tensor:
    label = batch["label"].to(device)
    return label.float() if spec.kind == "multilabel" else label.long()


@torch.no_grad()
def predict(model: nn.Module, loader: DataLoader, spec: LabelSpec, device: torch.device, amp: bool = True, criterion: Optional[nn.Module] = None) -> Predictions:
    """Probabilities for every study of `loader` in eval mode; mean loss when a criterion is given."""
    ids, probs, labels, total, count = [], [], [], 0.0, 0
    with eval_mode(model):
        for batch in loader:
            x, mask = batch["x"].to(device, non_blocking=True), batch["mask"].to(device, non_blocking=True)
            with autocast(device, amp):
                logits = model(x, mask).float()
            probs.append(spec.probabilities(logits).cpu().numpy())
            ids.extend(batch["id"])
            if "label" in batch:
                y = targets(batch, spec, device)
                labels.append(y.cpu().numpy())
                if criterion is not None:
                    total += float(criterion(logits, y)) * len(y)
                    count += len(y)
    return Predictions(
        ids=ids,
        probs=np.concatenate(probs),
        labels=np.concatenate(labels) if labels else None,
        loss=total / count if count else float("nan"),
    )
