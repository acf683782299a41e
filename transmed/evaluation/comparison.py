"""Side-by-side evaluations and paired DeLong tests of their AUCs on the same studies."""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import torch

from ..core.errors import DataError
from ..core.labels import LabelSpec
from .metrics import delong_test, holm_adjust


@dataclass
class Evaluation:
    """One evaluate.py output folder: its metrics.json and predictions.csv."""

    name: str
    path: Path
    metrics: dict
    predictions: pd.DataFrame

    @property
    def names(self) -> list[str]:
        return list(self.metrics["tasks"])


def evaluation_folders(path: str | Path) -> list[Path]:
    """An evaluation folder itself, or every `eval-*` folder of a run folder."""
    path = Path(path)
    if not path.is_dir():
        raise DataError(f"{path} does not exist (or is not a folder); give an evaluation folder or a run folder")
    if (path / "metrics.json").is_file():
        return [path]
    found = sorted(p.parent for p in path.glob("eval-*/metrics.json"))
    if not found:
        raise DataError(f"{path} holds no evaluation (no metrics.json, no eval-*/ folder); run evaluate.py on its checkpoint first")
    return found


def load_evaluation(folder: str | Path) -> Evaluation:
    folder = Path(folder)
    for name in ("metrics.json", "predictions.csv"):
        if not (folder / name).is_file():
            raise DataError(f"{folder / name} not found; is {folder} an evaluate.py output folder?")
    metrics = json.loads((folder / "metrics.json").read_text())
    predictions = pd.read_csv(folder / "predictions.csv", dtype={"id": str})
    return Evaluation(f"{folder.resolve().parent.name}/{folder.name}", folder, metrics, predictions)


def _with_ci(entry: dict) -> str:
    value, (lo, hi) = entry["value"], entry["ci"]
    if value is None:
        return "n/a"
    return f"{value:.3f} [{lo:.3f}, {hi:.3f}]"


def comparison_table(evaluations: Sequence[Evaluation]) -> pd.DataFrame:
    """One row per evaluation: split, n, the overall AUC and each task's/class's AUC with 95% intervals,
    then the other overall metrics (values only)."""
    rows = []
    for ev in evaluations:
        overall = ev.metrics["overall"]
        main = "auc" if "auc" in overall else "auc_macro"
        row = {"evaluation": ev.name, "split": ev.metrics.get("split"), "n": ev.metrics["n"], main: _with_ci(overall[main])}
        row.update({f"auc/{name}": _with_ci(ev.metrics["tasks"][name]["auc"]) for name in ev.names})
        row.update({k: None if v["value"] is None else round(v["value"], 3) for k, v in overall.items() if k != main})
        rows.append(row)
    return pd.DataFrame(rows)


def ranking_scores(ev: Evaluation) -> pd.DataFrame:
    """`id`, `label/<name>` and `score/<name>`: the probabilities before temperature scaling, in float64, from the
    `logit/<name>` columns: the order AUC uses. Not `prob/<name>`: a small fitted temperature saturates float32
    probabilities at 0 and 1, and ties lose the order."""
    frame = ev.predictions
    kind = "multiclass" if "auc_macro" in ev.metrics["overall"] else "multilabel"  # see metrics.compute_metrics
    logits = torch.from_numpy(frame[[f"logit/{name}" for name in ev.names]].to_numpy(np.float64))
    probs = LabelSpec(kind=kind, names=tuple(ev.names)).probabilities(logits, calibrated=False).numpy()
    scores = pd.DataFrame(probs, columns=[f"score/{name}" for name in ev.names])
    return pd.concat([frame[["id", *(f"label/{name}" for name in ev.names)]].reset_index(drop=True), scores], axis=1)


def paired_tests(a: Evaluation, b: Evaluation) -> list[dict]:
    """DeLong test of AUC(a) - AUC(b) per task/class both share, on their common studies.

    The two must cover the same studies with the same labels (else `ValueError`). p-values are
    per task; `compare` adds Holm-adjusted ones over all its tests.
    """
    pa, pb = ranking_scores(a), ranking_scores(b)
    if set(pa["id"]) != set(pb["id"]):
        raise ValueError(f"{a.name} and {b.name} are not on the same studies")
    merged = pa.merge(pb, on="id", suffixes=("/a", "/b"))
    rows = []
    for name in [n for n in a.names if n in b.names]:
        y, y_b = merged[f"label/{name}/a"], merged[f"label/{name}/b"]
        if not y.equals(y_b):
            raise ValueError(f"{a.name} and {b.name} disagree on the labels of {name!r}")
        row = {"a": a.name, "b": b.name, "task": name}
        try:
            row.update(delong_test(y.to_numpy(), merged[f"score/{name}/a"].to_numpy(), merged[f"score/{name}/b"].to_numpy()))
        except ValueError as err:  # too few positives or negatives
            row["note"] = str(err)
        rows.append(row)
    return rows


def compare(paths: Sequence[str | Path]) -> dict:
    """`{"table": DataFrame, "tests": [row, ...], "skipped": [reason, ...]}` over every evaluation
    the paths name; every pair on the same studies gets paired tests."""
    evaluations = [load_evaluation(folder) for path in paths for folder in evaluation_folders(path)]
    tests, skipped = [], []
    for a, b in itertools.combinations(evaluations, 2):
        try:
            tests.extend(paired_tests(a, b))
        except ValueError as err:
            skipped.append(str(err))
    tested = [row for row in tests if "p_value" in row]
    for row, adjusted in zip(tested, holm_adjust([row["p_value"] for row in tested])):
        row["p_holm"] = adjusted  # family-wise over every pair and task compared here
    return {"table": comparison_table(evaluations), "tests": tests, "skipped": skipped}


def format_comparison(result: dict) -> str:
    """The comparison as plain text: the metrics table, then the paired tests."""
    lines = [result["table"].to_string(index=False)]
    if result["tests"]:
        tests = pd.DataFrame(result["tests"])
        for column in ("auc1", "auc2", "diff", "z", "p_value", "p_holm"):
            if column in tests:
                tests[column] = tests[column].round(4)
        lines += [
            "",
            "Paired DeLong tests of AUC(a) - AUC(b), two-sided (p_holm: Holm-adjusted over all rows):",
            tests.to_string(index=False),
        ]
    lines += [f"no paired test: {reason}" for reason in result["skipped"]]
    return "\n".join(lines)
