"""Intervals and verdicts: a study arm's value with its 95% interval (a bootstrap over training seeds
and evaluation studies together; over seeds and epochs for seconds per epoch), and a claim that
compares two arms on their paired difference ("holds" or "does not hold" only when the difference's
interval excludes zero)."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np


@dataclass
class Interval:
    value: float
    low: float
    high: float

    @property
    def measured(self) -> bool:
        return math.isfinite(self.value)

    @property
    def has_interval(self) -> bool:
        return math.isfinite(self.low) and math.isfinite(self.high)

    def text(self, spec: str = ".3f") -> str:
        if not self.measured:
            return ""
        if not self.has_interval:
            return f"{self.value:{spec}} [no interval]"
        return f"{self.value:{spec}} [{self.low:{spec}}, {self.high:{spec}}]"


NAN = Interval(math.nan, math.nan, math.nan)


def seeds_and_studies(
    statistic: Callable[[int, np.ndarray], np.ndarray], n_seeds: int, weights: np.ndarray, rng: np.random.Generator
) -> Interval:
    """The mean over training seeds of a per-seed statistic, with a two-stage bootstrap interval: each
    replicate resamples the seeds and, with `weights` (R, N), the evaluation studies (the same
    studies for every seed, since every seed evaluates the same split).

    `statistic(s, W)` gives seed s's value under each row of study weights W (R, N): an AUC, a rate,
    or the paired difference of two arms on the same studies. With one seed the interval covers the
    evaluation studies only, not the training noise. A replicate's NaN seeds (a resample that left a
    task one class) are left out of its mean.
    """
    if n_seeds < 1:
        return NAN
    point = float(np.nanmean([statistic(s, np.ones((1, weights.shape[1])))[0] for s in range(n_seeds)]))
    per_seed = np.stack([statistic(s, weights) for s in range(n_seeds)], axis=1)  # (R, S)
    n_rep = len(per_seed)
    counts = np.ones((n_rep, 1)) if n_seeds == 1 else np.stack([np.bincount(row, minlength=n_seeds) for row in rng.integers(0, n_seeds, (n_rep, n_seeds))])
    finite = np.isfinite(per_seed)
    total = (counts * finite).sum(axis=1)
    replicates = np.divide((np.where(finite, per_seed, 0.0) * counts).sum(axis=1), total, out=np.full(n_rep, np.nan), where=total > 0)
    if not math.isfinite(point) or not np.isfinite(replicates).any():
        return Interval(point, math.nan, math.nan)
    low, high = np.nanpercentile(replicates, [2.5, 97.5])
    return Interval(point, min(float(low), point), max(float(high), point))


def uniform_resamples(n: int, n_bootstrap: int, rng: np.random.Generator) -> np.ndarray:
    """(B, n) bootstrap counts, unstratified."""
    return rng.multinomial(n, np.full(n, 1.0 / n), size=n_bootstrap).astype(float)


def seconds_interval(a: Sequence[Sequence[float]], b: Sequence[Sequence[float]] | None = None, n_bootstrap: int = 1000, seed: int = 0) -> Interval:
    """Mean seconds per epoch over seeds (`a`: one list of epoch times per seed), or with `b` the mean
    over seeds of the paired difference a - b; the bootstrap resamples seeds, then epochs within each.
    No interval from a single epoch of a single seed."""
    arms = [a] if b is None else [a, b]
    if any(not seeds or any(len(epochs) == 0 for epochs in seeds) for seeds in arms):
        return NAN
    point = float(np.mean([np.mean(x) - (0 if b is None else np.mean(y)) for x, y in zip(a, b or [[0.0]] * len(a))]))
    if all(len(seeds) == 1 and len(seeds[0]) == 1 for seeds in arms):
        return Interval(point, math.nan, math.nan)
    rng = np.random.default_rng(seed)
    n_seeds = min(len(seeds) for seeds in arms)

    def draw(epochs: Sequence[float]) -> float:
        return float(np.mean(rng.choice(np.asarray(epochs, dtype=float), len(epochs))))

    replicates = []
    for _ in range(n_bootstrap):
        chosen = rng.integers(0, n_seeds, n_seeds) if n_seeds > 1 else [0]
        replicates.append(np.mean([draw(a[s]) - (0.0 if b is None else draw(b[s])) for s in chosen]))
    low, high = np.percentile(replicates, [2.5, 97.5])
    return Interval(point, min(float(low), point), max(float(high), point))


HOLDS, FAILS, INCONCLUSIVE, NOT_MEASURED = "holds", "does not hold", "inconclusive", "not measured"


@dataclass
class Comparison:
    """One claim: arm `a` is expected to be `expect` ("higher" | "lower") than arm `b`.

    `ia` and `ib` are the arms (mean over seeds with its interval), `diff` the mean over seeds of the
    paired difference a - b on the same evaluation studies, with its interval: the verdict follows it.
    """

    claim: str
    a: str
    b: str
    ia: Interval
    ib: Interval
    diff: Interval
    expect: str
    unit: str  # auc | seconds | rate
    note: str = ""

    @property
    def verdict(self) -> str:
        if not (self.ia.measured and self.ib.measured and self.diff.measured):
            return NOT_MEASURED
        if not self.diff.has_interval:
            return f"{INCONCLUSIVE} (no interval)"
        if self.diff.low <= 0 <= self.diff.high:
            return f"{INCONCLUSIVE} (the difference's interval holds 0)"
        return HOLDS if (self.diff.value > 0) == (self.expect == "higher") else FAILS

    def difference(self) -> str:
        if not (self.ia.measured and self.ib.measured and self.diff.measured):
            return ""
        a, b, d = self.ia.value, self.ib.value, self.diff
        interval = f" [{d.low:+.3g}, {d.high:+.3g}]" if d.has_interval else ""
        if self.unit == "seconds":
            ratio = f" ({a / b:.2f}x the time, {(a / b - 1) * 100:+.0f}%)" if b > 0 else ""
            return f"{d.value:+.2f} s{interval}{ratio}"
        if self.unit == "rate":
            ratio = f", {a / b:.1f}x" if b > 0 else ""
            interval = f" [{d.low * 100:+.1f}, {d.high * 100:+.1f}]" if d.has_interval else ""
            return f"{d.value * 100:+.1f} points{interval}{ratio}"
        return f"{d.value:+.3f} AUC{interval}"

    def row(self) -> dict[str, str]:
        spec = ".2f" if self.unit == "seconds" else ".3f"
        return {
            "claim": self.claim,
            "compared": f"{self.a} vs {self.b}",
            "measured": f"{self.ia.text(spec)} vs {self.ib.text(spec)}",
            "difference [95% CI]": self.difference(),
            "expected": f"{self.a} {self.expect}",
            "verdict": self.verdict,
            "note": self.note,
        }
