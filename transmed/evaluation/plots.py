"""Evaluation figures (ROC, precision-recall, confusion matrices, reliability diagrams) saved as PNG.

Each function takes the same ``(probs, labels, names, kind)`` as `metrics.compute_metrics`,
writes one PNG to ``path`` (creating its folder) and closes the figure.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from sklearn.metrics import (
    average_precision_score,
    confusion_matrix,
    precision_recall_curve,
    roc_auc_score,
    roc_curve,
)

from transmed.evaluation.metrics import (
    binary_targets,
    calibration_curve,
    expected_calibration_error,
)


def plot_roc(
    probs: np.ndarray,
    labels: np.ndarray,
    names: list[str],
    kind: str,
    path: str | Path,
    n_bootstrap: int = 200,
    seed: int = 0,
) -> None:
    """ROC curve per task/class with a 95% band: 2.5-97.5 percentiles of the bootstrap TPR
    (positives and negatives resampled separately) interpolated on a common FPR grid."""
    scores, targets = binary_targets(probs, labels, names, kind)
    rng = np.random.default_rng(seed)
    grid = np.linspace(0, 1, 101)
    fig = Figure(figsize=(6, 6))
    ax = fig.subplots()
    for j, name in enumerate(names):
        s, y = scores[:, j], targets[:, j]
        if y.all() or not y.any():
            ax.plot([], [], label=f"{name} (AUC undefined: one class)")
            continue
        pos, neg = np.flatnonzero(y), np.flatnonzero(~y)
        tprs = np.empty((n_bootstrap, grid.size))
        for b in range(n_bootstrap):
            idx = np.r_[rng.choice(pos, pos.size), rng.choice(neg, neg.size)]
            fpr, tpr, _ = roc_curve(y[idx], s[idx])
            tprs[b] = np.interp(grid, fpr, tpr)
        lo, hi = np.percentile(tprs, [2.5, 97.5], axis=0)
        fpr, tpr, _ = roc_curve(y, s)
        (line,) = ax.plot(fpr, tpr, label=f"{name} (AUC {roc_auc_score(y, s):.3f})")
        ax.fill_between(grid, lo, hi, color=line.get_color(), alpha=0.2, linewidth=0)
    ax.plot([0, 1], [0, 1], "k--", linewidth=1, label="chance")
    _finish(
        fig,
        ax,
        path,
        "ROC curves (95% bootstrap band)",
        "False positive rate (1 - specificity)",
        "True positive rate (sensitivity)",
    )


def plot_pr(probs: np.ndarray, labels: np.ndarray, names: list[str], kind: str, path: str | Path) -> None:
    """Precision-recall curve per task/class, average precision in the legend and the
    prevalence (chance level) as a dotted line."""
    scores, targets = binary_targets(probs, labels, names, kind)
    fig = Figure(figsize=(6, 6))
    ax = fig.subplots()
    for j, name in enumerate(names):
        s, y = scores[:, j], targets[:, j]
        if y.all() or not y.any():
            ax.plot([], [], label=f"{name} (AP undefined: one class)")
            continue
        precision, recall, _ = precision_recall_curve(y, s)
        label = f"{name} (AP {average_precision_score(y, s):.3f})"
        (line,) = ax.step(recall, precision, where="post", label=label)
        ax.axhline(y.mean(), color=line.get_color(), linestyle=":", linewidth=1)
    _finish(fig, ax, path, "Precision-recall curves", "Recall (sensitivity)", "Precision (PPV)")


def plot_confusion(
    probs: np.ndarray,
    labels: np.ndarray,
    names: list[str],
    kind: str,
    path: str | Path,
    thresholds: dict[str, float] | None = None,
) -> None:
    """Confusion matrices with counts: multilabel, one 2x2 per task at ``probs >= t``
    (``t = thresholds.get(name, 0.5)``); multiclass, one KxK of argmax predictions."""
    scores, targets = binary_targets(probs, labels, names, kind)
    if kind == "multilabel":
        fig = Figure(figsize=(3.6 * len(names), 3.6))
        axes = fig.subplots(1, len(names), squeeze=False)
        for j, (name, ax) in enumerate(zip(names, axes[0])):
            t = (thresholds or {}).get(name, 0.5)
            cm = confusion_matrix(targets[:, j], scores[:, j] >= t, labels=[False, True])
            _draw_matrix(ax, cm, ["neg", "pos"], f"{name} (threshold {t:.2f})")
        fig.suptitle("Confusion matrices")
    else:
        k = len(names)
        fig = Figure(figsize=(1.2 * k + 3, 1.2 * k + 2.5))
        ax = fig.subplots()
        cm = confusion_matrix(targets.argmax(axis=1), scores.argmax(axis=1), labels=np.arange(k))
        _draw_matrix(ax, cm, list(names), "Confusion matrix (argmax)")
    _save(fig, path)


def plot_calibration(
    probs: np.ndarray,
    labels: np.ndarray,
    names: list[str],
    kind: str,
    path: str | Path,
    n_bins: int = 10,
    uncalibrated: np.ndarray | None = None,
) -> None:
    """Reliability diagram per task/class (one-vs-rest for multiclass): fraction positive
    against mean predicted probability in equal-width bins, with the diagonal and ECE.

    `uncalibrated`: the probabilities before temperature scaling, drawn dashed in the same colour
    next to the calibrated `probs`."""
    scores, targets = binary_targets(probs, labels, names, kind)
    before = None if uncalibrated is None else binary_targets(uncalibrated, labels, names, kind)[0]
    fig = Figure(figsize=(6, 6))
    ax = fig.subplots()
    ax.plot([0, 1], [0, 1], "k--", linewidth=1, label="perfect calibration")
    for j, name in enumerate(names):
        mean_prob, frac_pos, count = calibration_curve(scores[:, j], targets[:, j], n_bins)
        ece = expected_calibration_error(scores[:, j], targets[:, j], n_bins)
        filled = count > 0
        label = f"{name} (ECE {ece:.3f})" if before is None else f"{name}, calibrated (ECE {ece:.3f})"
        (line,) = ax.plot(mean_prob[filled], frac_pos[filled], "o-", label=label)
        if before is not None:
            mean_prob, frac_pos, count = calibration_curve(before[:, j], targets[:, j], n_bins)
            ece = expected_calibration_error(before[:, j], targets[:, j], n_bins)
            filled = count > 0
            ax.plot(
                mean_prob[filled], frac_pos[filled], "s--", color=line.get_color(), alpha=0.6, label=f"{name}, uncalibrated (ECE {ece:.3f})"
            )
    _finish(fig, ax, path, "Reliability diagram", "Mean predicted probability", "Fraction of positives")


def _draw_matrix(ax, cm: np.ndarray, ticks: list[str], title: str) -> None:
    """Heat map of a confusion matrix with each count written in its cell."""
    ax.imshow(cm, cmap="Blues")
    middle = (cm.min() + cm.max()) / 2  # colour scale midpoint: white text on dark cells
    for (i, j), count in np.ndenumerate(cm):
        ax.text(j, i, str(count), ha="center", va="center", color="white" if count > middle else "black")
    ax.set_xticks(range(len(ticks)), ticks, rotation=45 if len(ticks) > 2 else 0)
    ax.set_yticks(range(len(ticks)), ticks)
    ax.set(title=title, xlabel="Predicted", ylabel="True")


def _finish(fig, ax, path: str | Path, title: str, xlabel: str, ylabel: str) -> None:
    """Square unit axes with title, labels and legend, then save."""
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel, xlim=(0, 1), ylim=(0, 1.02))
    ax.legend(loc="best", fontsize="small")
    ax.grid(alpha=0.3)
    _save(fig, path)


def _save(fig, path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=150)
