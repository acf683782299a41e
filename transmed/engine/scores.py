"""Point AUCs over a whole split (the per-epoch validation score; never per batch)."""

from __future__ import annotations

import warnings

import numpy as np
from sklearn.metrics import roc_auc_score


def point_aucs(probs: np.ndarray, labels: np.ndarray, names: tuple[str, ...], kind: str) -> dict[str, float]:
    """AUC per task (multilabel: labels (N, K) 0/1) or per class one-vs-rest (multiclass: labels (N,) int).

    Also `mean`: the mean over tasks, or the macro average over classes. A task with one class only
    in `labels` gets NaN (with a warning) and is left out of the mean.
    """
    onehot = labels if kind == "multilabel" else np.eye(len(names))[labels.astype(int)]
    aucs: dict[str, float] = {}
    for k, name in enumerate(names):
        if len(np.unique(onehot[:, k])) < 2:
            warnings.warn(f"AUC for '{name}' is undefined: only one class present among {len(labels)} studies", stacklevel=2)
            aucs[name] = float("nan")
        else:
            aucs[name] = float(roc_auc_score(onehot[:, k], probs[:, k]))
    finite = [v for v in aucs.values() if np.isfinite(v)]
    aucs["mean"] = float(np.mean(finite)) if finite else float("nan")
    return aucs
