"""Classification metrics with stratified-bootstrap confidence intervals, DeLong test and ECE.

Two kinds of problem are supported:

* ``"multilabel"``: ``probs`` (N, K) sigmoid probabilities, ``labels`` (N, K) in {0, 1}; each
  column is an independent binary task.
* ``"multiclass"``: ``probs`` (N, K) softmax probabilities, ``labels`` (N,) class indices; each
  class is scored one-vs-rest.

Confidence intervals come from a bootstrap of studies expressed as per-sample resampling counts
(weights), so every metric is evaluated for all resamples at once with array operations.
"""

from __future__ import annotations

import warnings
from typing import Sequence

import numpy as np
from scipy.stats import norm, rankdata
from sklearn.metrics import roc_auc_score, roc_curve

from ..core.errors import DataError

KINDS = ("multilabel", "multiclass")
METRICS = (
    "auc",
    "average_precision",
    "accuracy",
    "balanced_accuracy",
    "sensitivity",
    "specificity",
    "f1",
    "ece",
)
ECE_BINS = 10  # bins of the per-task "ece" metric


def binary_targets(probs: np.ndarray, labels: np.ndarray, names: list[str], kind: str) -> tuple[np.ndarray, np.ndarray]:
    """Validates inputs and returns ``(scores, targets)``, both (N, K): one binary task per column.

    For ``"multiclass"`` the targets are the one-hot class indicators (one-vs-rest).
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    scores = np.asarray(probs, dtype=np.float64)
    labels = np.asarray(labels)
    if scores.ndim != 2 or scores.shape[0] == 0:
        raise ValueError(f"probs must have shape (N, K) with N > 0, got {scores.shape}")
    n, k = scores.shape
    if len(names) != k or len(set(names)) != k:
        raise ValueError(f"names must be {k} unique names, got {list(names)}")
    if not np.all(np.isfinite(scores)) or scores.min() < 0 or scores.max() > 1:
        raise ValueError("probs must be finite probabilities in [0, 1]")
    if kind == "multilabel":
        if labels.shape != (n, k) or not np.isin(labels, (0, 1)).all():
            raise ValueError(f"multilabel labels must be 0/1 of shape {(n, k)}, got {labels.shape}")
        return scores, labels.astype(bool)
    if k < 2:
        raise ValueError("multiclass needs at least 2 classes")
    if labels.shape != (n,) or not np.isin(labels, np.arange(k)).all():
        raise ValueError(f"multiclass labels must be class indices in [0, {k}) of shape {(n,)}")
    return scores, labels.astype(np.int64)[:, None] == np.arange(k)


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, n_bins: int = 10) -> float:
    """ECE of binary probabilities: sum over equal-width bins of |fraction positive - mean prob|,
    weighted by the bin's share of samples."""
    p = np.asarray(probs, dtype=np.float64)
    return float(_ece(p, np.asarray(labels).astype(bool), np.ones((1, p.size)), n_bins)[0])


def calibration_curve(probs: np.ndarray, labels: np.ndarray, n_bins: int = 10) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per equal-width bin: ``(mean_prob, fraction_positive, count)``; NaN for empty bins.

    Uses the same binning as `expected_calibration_error`.
    """
    p = np.asarray(probs, dtype=np.float64)
    y = np.asarray(labels).astype(np.float64)
    bins = _bin_index(p, n_bins)
    count = np.bincount(bins, minlength=n_bins).astype(np.float64)
    mean_prob = _div(np.bincount(bins, weights=p, minlength=n_bins), count)
    frac_pos = _div(np.bincount(bins, weights=y, minlength=n_bins), count)
    return mean_prob, frac_pos, count


def compute_metrics(
    probs: np.ndarray,
    labels: np.ndarray,
    names: list[str],
    kind: str,
    *,
    thresholds: dict[str, float] | None = None,
    n_bootstrap: int = 1000,
    seed: int = 0,
    ci: float = 0.95,
    uncalibrated: np.ndarray | None = None,
) -> dict:
    """Per-task and overall metrics, each as ``{"value": v, "ci": [lo, hi]}``.

    ``uncalibrated``: the same studies' probabilities before temperature scaling (``probs`` being the
    calibrated ones). The ranking metrics (auc, average_precision, auc_micro) then come from them,
    so calibration leaves them exactly as they were (one temperature over several classes can
    reorder a class's studies one-vs-rest), and ``ece_uncalibrated`` is added next to ``ece``.

    Per task/class: auc, average_precision, accuracy, balanced_accuracy, sensitivity,
    specificity, f1, ece. For ``"multilabel"`` the thresholded metrics use ``probs >= t`` with
    ``t = thresholds.get(name, 0.5)``, and ``overall`` holds the mean over tasks of each metric.
    For ``"multiclass"`` the thresholded one-vs-rest metrics use the argmax prediction
    (predicted class == class), ``thresholds`` is ignored and the returned thresholds are
    empty; ``overall`` holds auc, sensitivity, specificity, f1 (macro over classes, one-vs-rest),
    auc_macro (= auc), auc_micro, accuracy, balanced_accuracy (= sensitivity), f1_macro (= f1).

    Intervals are percentile intervals of a bootstrap of studies, one resample shared by all tasks
    or classes, so the overall means carry the tasks' covariance (see `_bootstrap_weights`:
    stratified on the class for multiclass and on the label for a single multilabel task,
    unstratified for several). A resample in which a task has one class only is left out of that
    task's auc and average_precision intervals. Intervals are widened where needed so that each
    contains its point value. A task with only one class present has NaN auc and
    average_precision, with a warning naming it; means skip NaN tasks.
    """
    scores, targets = binary_targets(probs, labels, names, kind)
    ranked = None if uncalibrated is None else binary_targets(uncalibrated, labels, names, kind)[0]
    if ranked is not None and ranked.shape != scores.shape:
        raise ValueError(f"uncalibrated probabilities must have the shape of probs {scores.shape}, got {ranked.shape}")
    metric_names = METRICS if ranked is None else (*METRICS, "ece_uncalibrated")
    if n_bootstrap < 1:
        raise ValueError(f"n_bootstrap must be >= 1, got {n_bootstrap}")
    if not 0 < ci < 1:
        raise ValueError(f"ci must be in (0, 1), got {ci}")
    n, k = scores.shape
    rng = np.random.default_rng(seed)

    if kind == "multilabel":
        unknown = set(thresholds or {}) - set(names)
        if unknown:
            raise ValueError(f"thresholds for unknown tasks: {sorted(unknown)}")
        used = {name: float((thresholds or {}).get(name, 0.5)) for name in names}
        preds = scores >= np.array([used[name] for name in names])
    else:
        if thresholds:
            warnings.warn("thresholds are ignored for multiclass (argmax prediction)", UserWarning)
        used = {}
        preds = scores.argmax(axis=1)[:, None] == np.arange(k)
    # one resample of studies for all tasks (they share studies, and their labels correlate): means over tasks keep their covariance
    shared = _bootstrap_weights(targets, kind, n_bootstrap, rng)

    point, boot = {}, {}
    for j, name in enumerate(names):
        y = targets[:, j]
        rank_j = None if ranked is None else ranked[:, j]
        unit = _binary_metrics(scores[:, j], y, preds[:, j], np.ones((1, n)), rank_j)
        point[name] = {m: v[0] for m, v in unit.items()}
        boot[name] = _binary_metrics(scores[:, j], y, preds[:, j], shared, rank_j)
        one_class = (shared @ y == 0) | (shared @ ~y == 0)  # unstratified resamples may lose a task's rare class
        for m in ("auc", "average_precision"):
            boot[name][m][one_class] = np.nan
        if y.all() or not y.any():
            warnings.warn(f"task {name!r} has only one class in labels; auc and average_precision are NaN", UserWarning)
            for m in ("auc", "average_precision"):
                point[name][m] = np.nan
                boot[name][m] = np.full(n_bootstrap, np.nan)
        # otherwise the point auc and average_precision are the unit-weight engine's, equal to sklearn's
        # (tests/test_metrics.py) and several times faster than calling sklearn per task

    tasks = {name: {m: _summary(point[name][m], boot[name][m], ci) for m in metric_names} for name in names}

    def mean_over_tasks(metric: str) -> tuple[float, np.ndarray]:
        values = _nanmean(np.array([point[name][metric] for name in names]), axis=0)
        return float(values), _nanmean(np.stack([boot[name][metric] for name in names]), axis=0)

    if kind == "multilabel":
        overall = {m: _summary(*mean_over_tasks(m), ci) for m in metric_names}
    else:
        correct = targets[np.arange(n), scores.argmax(axis=1)]
        micro = (scores if ranked is None else ranked).ravel()
        micro_boot = _ranking_metrics(micro, targets.ravel(), np.repeat(shared, k, axis=1))[0]
        calibration = [] if ranked is None else ["ece", "ece_uncalibrated"]
        macro = {m: _summary(*mean_over_tasks(m), ci) for m in ("auc", "sensitivity", "specificity", "f1", *calibration)}
        overall = {
            **macro,  # one-vs-rest, macro over classes: the same keys as a multilabel overall
            "auc_macro": macro["auc"],
            "auc_micro": _summary(roc_auc_score(targets.ravel(), micro), micro_boot, ci),
            "accuracy": _summary(correct.mean(), shared @ correct / n, ci),
            "balanced_accuracy": macro["sensitivity"],
            "f1_macro": macro["f1"],
        }
    return {"tasks": tasks, "overall": overall, "n": n, "thresholds": used}


def resampled_mean_auc(probs: np.ndarray, labels: np.ndarray, names: list[str], kind: str, weights: np.ndarray) -> np.ndarray:
    """(R,) the mean AUC over tasks (or macro over classes) for each row of study weights (R, N), as
    `compute_metrics` resamples it: a resample that leaves a task one class is left out of that
    task's mean. A row of ones gives the point value."""
    scores, targets = binary_targets(probs, labels, names, kind)
    per_task = []
    for j in range(scores.shape[1]):
        y = targets[:, j]
        auc = _ranking_metrics(scores[:, j], y, weights)[0]
        auc[(weights @ y == 0) | (weights @ ~y == 0)] = np.nan
        per_task.append(auc)
    return _nanmean(np.stack(per_task), axis=0)


def study_resamples(labels: np.ndarray, names: list[str], kind: str, n_bootstrap: int, rng: np.random.Generator) -> np.ndarray:
    """(B, N) bootstrap counts of studies, stratified as `compute_metrics` does."""
    _, targets = binary_targets(np.full((len(labels), len(names)), 0.5), labels, names, kind)
    return _bootstrap_weights(targets, kind, n_bootstrap, rng)


def youden_thresholds(probs: np.ndarray, labels: np.ndarray, names: list[str], kind: str) -> dict[str, float]:
    """Per task/class threshold maximising Youden's J (sensitivity + specificity - 1).

    Meant for choosing thresholds on the validation split; a prediction is positive when
    ``prob >= threshold``. Multiclass thresholds are one-vs-rest on the class probability
    (`compute_metrics` uses argmax for multiclass and does not apply them). A task with one
    class present gets 0.5 and a warning.
    """
    scores, targets = binary_targets(probs, labels, names, kind)
    out = {}
    for j, name in enumerate(names):
        y = targets[:, j]
        if y.all() or not y.any():
            warnings.warn(f"task {name!r} has only one class in labels; threshold set to 0.5", UserWarning)
            out[name] = 0.5
            continue
        fpr, tpr, thr = roc_curve(y, scores[:, j])
        finite = np.isfinite(thr)
        out[name] = float(thr[finite][np.argmax((tpr - fpr)[finite])])
    return out


def holm_adjust(p_values: Sequence[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values (family-wise error over all the tests given), in input order."""
    p = np.asarray(p_values, dtype=float)
    order = np.argsort(p)
    scaled = np.minimum(1.0, (len(p) - np.arange(len(p))) * p[order])
    adjusted = np.empty_like(p)
    adjusted[order] = np.maximum.accumulate(scaled)
    return adjusted.tolist()


def delong_test(y_true: np.ndarray, p1: np.ndarray, p2: np.ndarray) -> dict:
    """Paired DeLong test of two correlated ROC AUCs on the same samples (Sun & Xu 2014).

    Returns auc1, auc2, diff (auc1 - auc2), z and the two-sided p_value.
    """
    y = np.asarray(y_true)
    if y.ndim != 1 or not np.isin(y, (0, 1)).all():
        raise ValueError("y_true must be a 1-D array of 0/1 labels")
    y = y.astype(bool)
    scores = np.vstack([np.asarray(p1, dtype=np.float64), np.asarray(p2, dtype=np.float64)])
    if scores.shape[1] != y.size:
        raise ValueError("p1, p2 and y_true must have the same length")
    for which, row in (("p1", scores[0]), ("p2", scores[1])):
        bad = int((~np.isfinite(row)).sum())
        if bad:
            raise DataError(f"DeLong test needs finite scores: {which} has {bad} NaN or infinite value(s)")
    m, n = int(y.sum()), int((~y).sum())
    if m < 2 or n < 2:
        raise ValueError("DeLong test needs at least 2 positives and 2 negatives")
    pos, neg = scores[:, y], scores[:, ~y]
    tx = rankdata(pos, axis=1)
    ty = rankdata(neg, axis=1)
    tz = rankdata(np.hstack([pos, neg]), axis=1)
    aucs = (tz[:, :m].sum(axis=1) - m * (m + 1) / 2) / (m * n)
    v01 = (tz[:, :m] - tx) / n  # per positive: share of negatives scored below it
    v10 = 1.0 - (tz[:, m:] - ty) / m  # per negative: share of positives scored above it
    cov = np.cov(v01) / m + np.cov(v10) / n
    var = cov[0, 0] + cov[1, 1] - 2 * cov[0, 1]
    diff = float(aucs[0] - aucs[1])
    if diff == 0:
        z = 0.0
    elif var <= 0:
        z = float(np.copysign(np.inf, diff))
    else:
        z = diff / float(np.sqrt(var))
    p_value = float(2 * norm.sf(abs(z)))
    return {"auc1": float(aucs[0]), "auc2": float(aucs[1]), "diff": diff, "z": z, "p_value": p_value}


def to_jsonable(obj):
    """Recursively converts numpy scalars/arrays to Python types and non-finite floats to None."""
    if isinstance(obj, dict):
        return {(k.item() if isinstance(k, np.generic) else k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        return to_jsonable(obj.item())
    if isinstance(obj, float) and not np.isfinite(obj):
        return None
    return obj


def _div(a, b) -> np.ndarray:
    """a / b elementwise, NaN where b == 0."""
    a, b = np.broadcast_arrays(np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64))
    return np.divide(a, b, out=np.full(a.shape, np.nan), where=b != 0)


def _nanmean(x: np.ndarray, axis: int) -> np.ndarray:
    """Mean ignoring NaN; NaN (without a warning) where every entry is NaN."""
    valid = ~np.isnan(x)
    return _div(np.where(valid, x, 0.0).sum(axis=axis), valid.sum(axis=axis))


def _bin_index(p: np.ndarray, n_bins: int) -> np.ndarray:
    """Equal-width bin of each probability in [0, 1]; 1.0 falls in the last bin."""
    return np.clip((p * n_bins).astype(np.int64), 0, n_bins - 1)


def _bootstrap_weights(targets: np.ndarray, kind: str, n_bootstrap: int, rng: np.random.Generator) -> np.ndarray:
    """(B, N) resampling counts of studies, one resample shared by all tasks of ``targets`` (N, K).

    Multiclass (one label per study) and a single multilabel task are stratified on the label, so
    every resample keeps each class's count. Several multilabel tasks are resampled unstratified:
    stratifying on the label tuple leaves most of its up to 2^K strata with one study, always redrawn
    as itself, which shrinks every interval towards its point value as tasks are added.
    """
    n, k = targets.shape
    if kind == "multiclass":
        strata = targets.argmax(axis=1)
    elif k == 1:
        strata = targets[:, 0].astype(np.int64)
    else:
        strata = np.zeros(n, dtype=np.int64)
    return _stratified_weights(strata, n_bootstrap, rng)


def _stratified_weights(strata: np.ndarray, n_bootstrap: int, rng: np.random.Generator) -> np.ndarray:
    """(B, N) bootstrap counts: each stratum resampled with replacement to its own size."""
    weights = np.zeros((n_bootstrap, strata.size))
    for value in np.unique(strata):
        members = np.flatnonzero(strata == value)
        size = members.size
        draws = rng.integers(0, size, size=(n_bootstrap, size)) + size * np.arange(n_bootstrap)[:, None]
        weights[:, members] = np.bincount(draws.ravel(), minlength=n_bootstrap * size).reshape(n_bootstrap, size)
    return weights


def _ranking_metrics(score: np.ndarray, y: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """ROC AUC and average precision (sklearn definitions, ties included) for each row of
    sample weights ``w`` (R, N); integer weights equal evaluating the repeated samples.

    AUC = sum over positives of w_i * (negative weight below s_i + half the tied) / (P * Nn);
    AP = sum over positives of w_i * precision at threshold s_i / P.
    """
    pos, neg = np.flatnonzero(y), np.flatnonzero(~y)
    sp, sn = score[pos], score[neg]
    w_pos = w[:, pos]
    order_n, order_p = np.argsort(sn, kind="stable"), np.argsort(sp, kind="stable")
    cum_neg = _cumsum0(w[:, neg[order_n]])  # (R, n_neg + 1): weight of the lowest j negatives
    cum_pos = _cumsum0(w_pos[:, order_p])
    sn, sp_sorted = sn[order_n], sp[order_p]
    neg_below = cum_neg[:, np.searchsorted(sn, sp, side="left")]
    neg_upto = cum_neg[:, np.searchsorted(sn, sp, side="right")]
    n_pos, n_neg = cum_pos[:, -1], cum_neg[:, -1]
    auc = _div((w_pos * (neg_below + neg_upto)).sum(axis=1), 2 * n_pos * n_neg)
    tp = n_pos[:, None] - cum_pos[:, np.searchsorted(sp_sorted, sp, side="left")]  # positives >= s_i
    fp = n_neg[:, None] - neg_below
    precision = np.divide(tp, tp + fp, out=np.zeros_like(tp), where=tp > 0)
    ap = _div((w_pos * precision).sum(axis=1), n_pos)
    return auc, ap


def _cumsum0(x: np.ndarray) -> np.ndarray:
    """Cumulative sum along rows with a leading zero column."""
    out = np.zeros((x.shape[0], x.shape[1] + 1))
    np.cumsum(x, axis=1, out=out[:, 1:])
    return out


def _ece(p: np.ndarray, y: np.ndarray, w: np.ndarray, n_bins: int) -> np.ndarray:
    """ECE for each row of sample weights ``w`` (R, N)."""
    onehot = _bin_index(p, n_bins)[:, None] == np.arange(n_bins)
    gap = w @ (onehot * (y - p)[:, None])  # per bin: sum of labels minus sum of probabilities
    return np.abs(gap).sum(axis=1) / w.sum(axis=1)


def _binary_metrics(
    score: np.ndarray, y: np.ndarray, pred: np.ndarray, w: np.ndarray, ranked: np.ndarray | None = None
) -> dict[str, np.ndarray]:
    """All per-task metrics for each row of sample weights ``w`` (R, N); arrays of shape (R,).

    ``ranked``: the uncalibrated probabilities, which the ranking metrics then use and whose ECE is
    ``ece_uncalibrated``; None: ``score`` serves for everything.
    """
    auc, ap = _ranking_metrics(score if ranked is None else ranked, y, w)
    n_pos, n_neg = w @ y, w @ ~y
    tp, fp = w @ (y & pred), w @ (~y & pred)
    sensitivity = _div(tp, n_pos)
    specificity = _div(n_neg - fp, n_neg)
    return {
        "auc": auc,
        "average_precision": ap,
        "accuracy": (tp + n_neg - fp) / (n_pos + n_neg),
        "balanced_accuracy": (sensitivity + specificity) / 2,
        "sensitivity": sensitivity,
        "specificity": specificity,
        "f1": _div(2 * tp, tp + fp + n_pos),
        "ece": _ece(score, y, w, ECE_BINS),
        **({} if ranked is None else {"ece_uncalibrated": _ece(ranked, y, w, ECE_BINS)}),
    }


def _summary(value: float, boot: np.ndarray, ci: float) -> dict:
    """``{"value", "ci"}`` with the percentile interval widened to contain the value."""
    value = float(value)
    boot = boot[~np.isnan(boot)]
    if np.isnan(value) or boot.size == 0:
        return {"value": value, "ci": [value, value]}
    alpha = (1 - ci) / 2
    lo, hi = np.percentile(boot, [100 * alpha, 100 * (1 - alpha)])
    return {"value": value, "ci": [float(min(lo, value)), float(max(hi, value))]}
