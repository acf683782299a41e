"""Running a model over a loader: logits, probabilities and labels for a whole split."""

from __future__ import annotations

from typing import Iterable, Optional

import numpy as np
import torch
from torch import nn

from ..core.labels import LabelSpec, Predictions
from ..core.progress import progress
from ..data.collate import to_device
from .utils import autocast, eval_mode


def targets(labels: torch.Tensor, spec: LabelSpec, device: torch.device) -> torch.Tensor:
    labels = torch.as_tensor(labels).to(device)
    return labels.float() if spec.kind == "multilabel" else labels.long()


@torch.no_grad()
def predict(
    model: nn.Module, loader: Iterable[dict], spec: LabelSpec, device: torch.device, amp: bool = True, desc: Optional[str] = "predict"
) -> Predictions:
    """Logits and probabilities for every study of `loader` (a loader or a list of batches), in eval mode.

    `desc` names the progress bar (`core.progress`); None: no bar (a single study).
    """
    ids, logits, labels = [], [], []
    with eval_mode(model):
        for batch in loader if desc is None else progress(loader, desc=desc, unit="batches"):
            x, mask = to_device(batch, device)
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
