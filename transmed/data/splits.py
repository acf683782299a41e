"""Patient-level, label-stratified splits: k folds, a held-out fraction, and the no-overlap check.

Both splitters walk one seeded ordering: patients grouped by stratum (label), shuffled within it.
Dealing that list round-robin into k folds, or taking every (1/fraction)-th patient, keeps each
label's share the same in every part, also for labels with very few patients.
"""

from __future__ import annotations

import math
from typing import Hashable, Iterable, Mapping, Sequence

import numpy as np

from ..core.errors import StudyError
from .screening import OnError


def _stratified_order(ids: Sequence[str], strata: Sequence[Hashable], seed: int) -> list[str]:
    if len(ids) != len(strata):
        raise ValueError(f"{len(ids)} ids but {len(strata)} strata")
    rng = np.random.default_rng(seed)
    groups: dict[Hashable, list[str]] = {}
    for sid, stratum in zip(ids, strata):
        groups.setdefault(stratum, []).append(sid)
    order: list[str] = []
    for stratum in sorted(groups, key=str):
        order.extend(str(sid) for sid in rng.permutation(sorted(groups[stratum])))
    return order


def stratified_folds(ids: Sequence[str], strata: Sequence[Hashable], num_folds: int, seed: int) -> dict[str, int]:
    """Fold index (0..num_folds-1) per patient; every label spread evenly over the folds."""
    if num_folds < 2:
        raise ValueError(f"need at least 2 folds, got {num_folds}")
    return {sid: p % num_folds for p, sid in enumerate(_stratified_order(ids, strata, seed))}


def stratified_holdout(ids: Sequence[str], strata: Sequence[Hashable], fraction: float, seed: int) -> set[str]:
    """floor(fraction * N) patients, each label represented in proportion."""
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"the held-out fraction must lie in (0, 1), got {fraction}")
    order = _stratified_order(ids, strata, seed)
    return {sid for p, sid in enumerate(order) if math.floor((p + 1) * fraction) > math.floor(p * fraction)}


def check_disjoint(splits: Mapping[str, Iterable[str]], on_error: OnError, source: str) -> set[str]:
    """Reports every patient id found in more than one split; returns those ids."""
    seen: dict[str, list[str]] = {}
    for split, ids in splits.items():
        for sid in ids:
            seen.setdefault(sid, []).append(split)
    shared = {sid: names for sid, names in seen.items() if len(names) > 1}
    for sid in sorted(shared):
        on_error(StudyError(sid, f"appears in more than one split ({' and '.join(shared[sid])}); a patient belongs to one split", source))
    return set(shared)
