"""Temperature scaling (Guo et al. 2017): one temperature per task (multilabel) or one for all classes
(multiclass), fitted on the validation split by minimising its negative log-likelihood.

Dividing the logits by T > 0 keeps every decision (sigmoid(z / T) >= 0.5 iff z >= 0; the argmax of
softmax(z / T) is the argmax of z) and each task's ranking of studies, so AUC is unchanged.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import expit, log_expit, log_softmax

from ..core.labels import LabelSpec

T_RANGE = (0.05, 20.0)  # the search range of a temperature: beyond it the fit only chases a handful of studies
ECE_BINS = 10  # evaluation.metrics.ECE_BINS: the same equal-width bins


def nll(logits: np.ndarray, labels: np.ndarray, kind: str, temperature: float) -> float:
    """Mean negative log-likelihood of `labels` under activation(logits / temperature).

    multilabel: one task, `logits` and `labels` (N,); multiclass: `logits` (N, K), `labels` (N,) class indices.
    """
    z = np.asarray(logits, dtype=np.float64) / temperature
    if kind == "multilabel":
        y = np.asarray(labels, dtype=np.float64)
        return float(-np.mean(y * log_expit(z) + (1 - y) * log_expit(-z)))
    return float(-np.mean(log_softmax(z, axis=1)[np.arange(len(z)), np.asarray(labels, dtype=np.int64)]))


def ece(probs: np.ndarray, targets: np.ndarray, n_bins: int = ECE_BINS) -> float:
    """Expected calibration error of binary probabilities (`evaluation.metrics.expected_calibration_error`'s
    bins; repeated here because the engine may not import evaluation)."""
    p = np.asarray(probs, dtype=np.float64)
    bins = np.clip((p * n_bins).astype(np.int64), 0, n_bins - 1)
    gap = np.bincount(bins, weights=np.asarray(targets, dtype=np.float64) - p, minlength=n_bins)
    return float(np.abs(gap).sum() / len(p))


def _fit_one(logits: np.ndarray, labels: np.ndarray, kind: str) -> float:
    """The temperature in `T_RANGE` minimising the NLL: a bounded search on log T (the NLL is unimodal there)."""
    result = minimize_scalar(
        lambda log_t: nll(logits, labels, kind, math.exp(log_t)),
        bounds=(math.log(T_RANGE[0]), math.log(T_RANGE[1])),
        method="bounded",
        options={"xatol": 1e-5},
    )
    return float(math.exp(result.x))


def fit_temperature(logits: np.ndarray, labels: np.ndarray, spec: LabelSpec) -> tuple[tuple[float, ...], dict]:
    """Temperatures for `spec`'s outputs from validation logits (N, K) and labels, and a report.

    A fitted temperature that would raise the validation ECE of its task (or, multiclass, the mean
    one-vs-rest ECE) is not kept: T = 1 there, so calibration never makes validation ECE worse. A
    task with one class only among the labels keeps T = 1 (its NLL falls without bound), with a warning.
    The report: `temperature`, and `nll`, `ece` (mean over tasks or classes), each `{"before", "after"}`.
    """
    logits = np.asarray(logits, dtype=np.float64)
    labels = np.asarray(labels)
    if spec.kind == "multilabel":
        columns = [(logits[:, k], labels[:, k]) for k in range(spec.num_outputs)]
    else:
        columns = [(logits, labels)]
    temperature = []
    for name, (z, y) in zip(spec.names if spec.kind == "multilabel" else ("all classes",), columns):
        if len(np.unique(y)) < 2:
            warnings.warn(f"temperature for {name!r} left at 1: only one class among {len(y)} validation studies", stacklevel=2)
            temperature.append(1.0)
            continue
        fitted = _fit_one(z, y, spec.kind)
        before, after = (_column_ece(z, y, spec.kind, t) for t in (1.0, fitted))
        temperature.append(fitted if after <= before else 1.0)

    def summary(t: tuple[float, ...]) -> tuple[float, float]:
        if spec.kind == "multiclass":
            return nll(logits, labels, "multiclass", t[0]), _column_ece(logits, labels, "multiclass", t[0])
        return (
            float(np.mean([nll(z, y, "multilabel", tk) for (z, y), tk in zip(columns, t)])),
            float(np.mean([_column_ece(z, y, "multilabel", tk) for (z, y), tk in zip(columns, t)])),
        )

    ones = (1.0,) * len(temperature)
    (nll_before, ece_before), (nll_after, ece_after) = summary(ones), summary(tuple(temperature))
    report = {
        "temperature": temperature,
        "nll": {"before": nll_before, "after": nll_after},
        "ece": {"before": ece_before, "after": ece_after},
    }
    return tuple(temperature), report


def _column_ece(logits: np.ndarray, labels: np.ndarray, kind: str, temperature: float) -> float:
    """ECE at `temperature`: of one task (multilabel), or the mean over classes one-vs-rest (multiclass), as evaluate reports it."""
    z = logits / temperature
    if kind == "multilabel":
        return ece(expit(z), labels)
    probs = np.exp(log_softmax(z, axis=1))
    onehot = labels.astype(np.int64)[:, None] == np.arange(probs.shape[1])
    return float(np.mean([ece(probs[:, k], onehot[:, k]) for k in range(probs.shape[1])]))
