"""Intervals and verdicts: a value with its 95% interval (Wilson for a proportion, t for a mean), and a
claim that compares two of them ("holds" or "does not hold" only when the intervals are apart)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

Z95 = 1.959963984540054


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


def wilson_interval(successes: int, n: int, z: float = Z95) -> Interval:
    """A proportion with its Wilson score interval (exact at 0 and n, unlike the normal one)."""
    if n <= 0:
        return NAN
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    low = 0.0 if successes == 0 else max(0.0, centre - half)
    high = 1.0 if successes == n else min(1.0, centre + half)
    return Interval(p, low, high)


def mean_interval(values: Sequence[float]) -> Interval:
    """Mean with a 95% t-interval (no interval from one value; not below 0 for values that are not)."""
    from scipy.stats import t

    values = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=float)
    if len(values) == 0:
        return NAN
    mean = float(values.mean())
    if len(values) < 2:
        return Interval(mean, math.nan, math.nan)
    half = float(t.ppf(0.975, len(values) - 1) * values.std(ddof=1) / math.sqrt(len(values)))
    return Interval(mean, max(mean - half, 0.0) if values.min() >= 0 else mean - half, mean + half)


HOLDS, FAILS, INCONCLUSIVE, NOT_MEASURED = "holds", "does not hold", "inconclusive", "not measured"


@dataclass
class Comparison:
    """One claim: `a` is expected to be `expect` ("higher" | "lower") than `b`."""

    claim: str
    a: str
    b: str
    ia: Interval
    ib: Interval
    expect: str
    unit: str  # auc | seconds | rate
    note: str = ""

    @property
    def verdict(self) -> str:
        if not (self.ia.measured and self.ib.measured):
            return NOT_MEASURED
        if not (self.ia.has_interval and self.ib.has_interval):
            return f"{INCONCLUSIVE} (no interval)"
        if self.ia.low <= self.ib.high and self.ib.low <= self.ia.high:
            return f"{INCONCLUSIVE} (intervals overlap)"
        higher = self.ia.value > self.ib.value
        return HOLDS if higher == (self.expect == "higher") else FAILS

    def difference(self) -> str:
        if not (self.ia.measured and self.ib.measured):
            return ""
        a, b = self.ia.value, self.ib.value
        if self.unit == "seconds":
            return f"{a / b:.2f}x the time ({(a / b - 1) * 100:+.0f}%)" if b > 0 else ""
        if self.unit == "rate":
            ratio = f", {a / b:.1f}x" if b > 0 else ""
            return f"{(a - b) * 100:+.1f} points{ratio}"
        return f"{a - b:+.3f} AUC"

    def row(self) -> dict[str, str]:
        spec = ".2f" if self.unit == "seconds" else ".3f"
        return {
            "claim": self.claim,
            "compared": f"{self.a} vs {self.b}",
            "measured": f"{self.ia.text(spec)} vs {self.ib.text(spec)}",
            "difference": self.difference(),
            "expected": f"{self.a} {self.expect}",
            "verdict": self.verdict,
            "note": self.note,
        }
