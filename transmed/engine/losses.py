"""Class-balanced losses from training-set label frequencies."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ..core.errors import DataError
from ..core.labels import LabelSpec


def build_loss(spec: LabelSpec, train_labels: np.ndarray, balanced: bool = True) -> nn.Module:
    """BCE-with-logits with `pos_weight = negatives/positives` per task, or CE with inverse-frequency class weights.

    Weighting trades calibration for sensitivity to the rare class: the weighted loss is minimised by
    probabilities shifted towards it (AUC is unaffected). `balanced=False` (`train.class_weights=false`)
    trains unweighted, for calibrated probabilities.
    """
    if spec.kind == "multilabel":
        pos = train_labels.sum(axis=0)
        neg = len(train_labels) - pos
        for name, p, n in zip(spec.names, pos, neg):
            if p == 0 or n == 0:
                raise DataError(
                    f"task '{name}' has {int(p)} positive and {int(n)} negative training studies, so it cannot be learned; "
                    f"check its training labels (MRNet: train-{name}.csv), or leave it out of data.tasks"
                )
        return nn.BCEWithLogitsLoss(pos_weight=torch.tensor(neg / pos, dtype=torch.float32) if balanced else None)
    counts = np.bincount(train_labels.astype(int), minlength=spec.num_outputs).astype(np.float64)
    missing = [name for name, c in zip(spec.names, counts) if c == 0]
    if missing:
        raise DataError(
            f"class(es) {missing} of {list(spec.names)} have no training studies, so they cannot be learned; give them training "
            f"studies in labels.csv (split or fold column), or list only the trained classes in data.classes"
        )
    weights = counts.sum() / (len(counts) * counts)
    return nn.CrossEntropyLoss(weight=torch.tensor(weights, dtype=torch.float32) if balanced else None)
