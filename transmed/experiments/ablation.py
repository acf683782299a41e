"""Ablations (`transmed ablate FILE`): a grid of config overrides trained as one W&B group, then
compared in a table and a plot.

FILE is YAML:

    base: configs/knee.yaml          # the config every run starts from (--base replaces it)
    group: knee-backbone             # W&B group and output folder (--group replaces it)
    grid:                            # key -> values; several keys make a product
      model.backbone: [resnet18, resnet34, convnext_tiny]

`grid` may also be a list of such mappings; their runs are concatenated (a union of products).
Extra `key=value` apply to every run. Each run is `{output_dir}/{group}/{run}/`, a W&B run in the
group tagged with its varied values; its best checkpoint's AUC gets a bootstrap interval on
valid (optimistic: valid also chose the epoch) and on test where the data has a test split.
The comparison is `{output_dir}/{group}/comparison.{csv,md,png}`. A failed run is a row with its
error and does not stop the others. Run again with `train.resume=auto` to finish interrupted runs
and keep finished ones. `--sweep OUT.yaml` writes the grid as a W&B sweep instead (`experiments/sweep.py`).
"""

from __future__ import annotations

import itertools
import json
import re
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np
import pandas as pd
import yaml
from omegaconf import DictConfig, OmegaConf

from ..config import is_list, load_config
from ..core.errors import ConfigError, DataError, TransMedError
from ..core.progress import progress
from ..core.tables import markdown_table
from ..data import read_manifest
from ..engine import train
from ..evaluation.evaluate import predict_split, predictions_frame, uncalibrated
from ..evaluation.metrics import compute_metrics
from ..models.loading import load_trained

FILE_KEYS = ("base", "group", "grid")


@dataclass
class Ablation:
    base: str
    group: str
    runs: list[dict[str, Any]]  # per run: the varied key -> value

    @property
    def keys(self) -> list[str]:
        """Every varied key, in order of first appearance."""
        return list(dict.fromkeys(key for run in self.runs for key in run))


def expand_grid(grid: dict[str, list] | list[dict[str, list]]) -> list[dict[str, Any]]:
    """{key: values, ...} -> the product of the values; a list of such mappings -> their concatenation."""
    if isinstance(grid, dict):
        grid = [grid]
    runs: list[dict[str, Any]] = []
    for part in grid:
        if not isinstance(part, dict) or not part:
            raise ConfigError(f"ablation grid: expected a mapping of key -> list of values, got {part!r}")
        for key, values in part.items():
            if not isinstance(values, list) or not values:
                raise ConfigError(f"ablation grid key '{key}': expected a non-empty list of values, got {values!r}")
        for combo in itertools.product(*part.values()):
            run = dict(zip(part, combo))
            if run not in runs:
                runs.append(run)
    return runs


def load_ablation(path: str | Path, base: Optional[str] = None, group: Optional[str] = None) -> Ablation:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"ablation file not found: {path}")
    try:
        spec = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"cannot read ablation file {path}: {str(err).splitlines()[0]}") from None
    if not isinstance(spec, dict):
        raise ConfigError(f"ablation file {path}: the top level must be a mapping (base, group, grid)")
    unknown = sorted(set(spec) - set(FILE_KEYS))
    if unknown:
        raise ConfigError(f"ablation file {path}: unknown key(s) {unknown}; expected {list(FILE_KEYS)}")
    if "grid" not in spec:
        raise ConfigError(f"ablation file {path}: no 'grid'")
    base, group = base or spec.get("base"), group or spec.get("group") or path.stem
    if not base:
        raise ConfigError(f"ablation file {path}: no 'base' config (give one in the file or with --base)")
    return Ablation(str(base), str(group), expand_grid(spec["grid"]))


def format_value(value: Any) -> str:
    """A value as the right-hand side of a `key=value` override."""
    if isinstance(value, bool):
        return str(value).lower()
    if value is None:
        return "null"
    if is_list(value):
        return "[" + ",".join(format_value(v) for v in value) + "]"
    return str(value)


def run_name(run: dict[str, Any]) -> str:
    """`trainable_blocks-0`, `name-late_fusion_modalities-sagittal`: last key part, value, filesystem-safe."""
    parts = [f"{key.split('.')[-1]}-{format_value(value).replace(',', '+')}" for key, value in run.items()]
    return re.sub(r"[^A-Za-z0-9_.+=-]", "", "_".join(parts))


def run_configs(ablation: Ablation, overrides: Sequence[str] = ()) -> list[DictConfig]:
    """One validated config per run (a typo anywhere fails here, before anything trains)."""
    configs, names = [], set()
    for run in ablation.runs:
        name = run_name(run)
        if name in names:
            name = f"{name}-{len(names)}"
        names.add(name)
        values = [f"{key}={format_value(value)}" for key, value in run.items()]
        cfg = load_config(ablation.base, [*overrides, *values, f"run_name={ablation.group}/{name}"])
        cfg.wandb.group = ablation.group
        cfg.wandb.tags = [*cfg.wandb.tags, *(f"{key}={format_value(value)}" for key, value in run.items())]
        configs.append(cfg)
    return configs


def has_split(cfg: DictConfig, split: str) -> bool:
    """Whether the data defines `split` with at least one study (a test split needs data.val_fraction for MRNet)."""
    try:
        return len(read_manifest(cfg, split)) > 0
    except DataError:
        return False


def bootstrap_aucs(checkpoint: Path, n_bootstrap: int = 1000, save_to: Optional[Path] = None) -> dict[str, dict]:
    """`{split: {"value", "ci"}}` of the checkpoint's AUC (mean over tasks, or macro over classes) on
    `valid` and, where the data has one, `test`; with `save_to`, each split's per-study predictions
    go to `{save_to}/predictions-{split}.csv` (what the seed studies pair across runs)."""
    model, cfg, spec, _ = load_trained(checkpoint)
    result = {}
    for split in ("valid", "test"):
        if split == "valid" or has_split(cfg, split):
            preds = predict_split(model, cfg, spec, split)
            if save_to is not None:
                predictions_frame(preds, spec).to_csv(save_to / f"predictions-{split}.csv", index=False)
            metrics = compute_metrics(
                preds.probs, preds.labels, list(spec.names), spec.kind, n_bootstrap=n_bootstrap, seed=cfg.seed,
                uncalibrated=uncalibrated(preds, spec),  # AUC in the uncalibrated order: calibrated float32 probabilities can tie at 0 and 1
            )
            result[split] = metrics["overall"]["auc"]
    return result


def run_result(run_dir: Path, n_bootstrap: int = 1000) -> dict[str, Any]:
    """AUC with bootstrap intervals (valid at the best epoch, which valid also chose, so optimistic; test
    where the data has it), parameter counts and mean seconds per epoch."""
    summary = json.loads((run_dir / "summary.json").read_text())
    epochs = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    aucs = bootstrap_aucs(run_dir / "checkpoints" / "best.pt", n_bootstrap, save_to=run_dir)
    test = aucs.get("test", {"value": np.nan, "ci": [np.nan, np.nan]})
    return {
        "best_epoch": summary["best"]["epoch"],
        "val/auc": summary["best"]["val/auc"],
        "val/auc_ci_low": aucs["valid"]["ci"][0],
        "val/auc_ci_high": aucs["valid"]["ci"][1],
        "test/auc": test["value"],
        "test/auc_ci_low": test["ci"][0],
        "test/auc_ci_high": test["ci"][1],
        "params/total": summary["params"]["total"],
        "params/trainable": summary["params"]["trainable"],
        "sec/epoch": float(np.mean([e["sec/epoch"] for e in epochs])),
    }


def attempt(step: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """`{"status": "ok", **step()}`, or `{"status": "failed: Type: message"}` when it raises (a bug, not
    the user's input, also prints its traceback): one failed run is reported and the others go on."""
    try:
        return {"status": "ok", **step()}
    except Exception as err:  # noqa: BLE001 - one failed run is reported and the others go on
        if not isinstance(err, TransMedError):  # a bug, not the user's input: keep its traceback
            traceback.print_exc()
        return {"status": f"failed: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"}


def train_and_measure(cfg: DictConfig, n_bootstrap: int = 1000) -> dict[str, Any]:
    """Trains one run, then `run_result` of it, under `attempt`: `status` first, then its values."""
    return attempt(lambda: run_result(train(cfg), n_bootstrap))


def run_ablation(
    path: str | Path, overrides: Sequence[str] = (), base: Optional[str] = None, group: Optional[str] = None, n_bootstrap: int = 1000
) -> tuple[Path, pd.DataFrame]:
    """Trains every run of the ablation file, then writes the comparison; returns its folder and table."""
    ablation = load_ablation(path, base, group)
    configs = run_configs(ablation, overrides)
    out_dir = Path(configs[0].output_dir) / ablation.group
    rows = []
    for i, cfg in enumerate(progress(configs, desc=f"ablation {ablation.group}", unit="run"), start=1):
        print(f"[{i}/{len(configs)}] {cfg.run_name}", flush=True)
        row: dict[str, Any] = {"run": Path(cfg.run_name).name, **{key: format_value(OmegaConf.select(cfg, key)) for key in ablation.keys}}
        row.update(train_and_measure(cfg, n_bootstrap))
        rows.append(row)
    frame = pd.DataFrame(rows)
    write_comparison(frame, ablation, overrides, out_dir)
    return out_dir, frame


def write_comparison(frame: pd.DataFrame, ablation: Ablation, overrides: Sequence[str], out_dir: Path) -> None:
    """comparison.csv (all columns), comparison.md (readable table) and comparison.png (val/auc with intervals)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    columns = [
        "run",
        *ablation.keys,
        "status",
        "best_epoch",
        "val/auc",
        "val/auc_ci_low",
        "val/auc_ci_high",
        "test/auc",
        "test/auc_ci_low",
        "test/auc_ci_high",
        "params/total",
        "params/trainable",
        "sec/epoch",
    ]
    frame = frame.reindex(columns=columns).astype({"best_epoch": "Int64", "params/total": "Int64", "params/trainable": "Int64"})
    frame.to_csv(out_dir / "comparison.csv", index=False)

    ok = frame["status"] == "ok"
    table = frame[["run", *ablation.keys]].copy()
    table["val/auc [95% CI]"] = [
        f"{r['val/auc']:.3f} [{r['val/auc_ci_low']:.3f}, {r['val/auc_ci_high']:.3f}]" if good else ""
        for good, (_, r) in zip(ok, frame.iterrows())
    ]
    if frame["test/auc"].notna().any():
        table["test/auc [95% CI]"] = [
            f"{r['test/auc']:.3f} [{r['test/auc_ci_low']:.3f}, {r['test/auc_ci_high']:.3f}]" if pd.notna(r["test/auc"]) else ""
            for _, r in frame.iterrows()
        ]
    table["best epoch"] = frame["best_epoch"].map(lambda v: "" if pd.isna(v) else str(int(v)))
    table["params/trainable"] = frame["params/trainable"].map(lambda v: "" if pd.isna(v) else f"{int(v):,}")
    table["sec/epoch"] = frame["sec/epoch"].map(lambda v: "" if pd.isna(v) else f"{v:.1f}")
    table["status"] = frame["status"]
    header = f"# {ablation.group}\n\nbase: `{ablation.base}`" + (f"; overrides: `{' '.join(overrides)}`" if overrides else "") + "\n\n"
    (out_dir / "comparison.md").write_text(header + markdown_table(table.to_dict(orient="records")) + "\n")
    plot_comparison(frame, out_dir / "comparison.png", ablation.group)


def plot_comparison(frame: pd.DataFrame, path: Path, title: str) -> None:
    """AUC per run (a point with its bootstrap interval): test where every finished run has it, else
    val at the best epoch; failed runs are marked."""
    from matplotlib.figure import Figure


    n = len(frame)
    fig = Figure(figsize=(7, 1.2 + 0.4 * n))
    ax = fig.subplots()
    y = np.arange(n)[::-1]
    ok = (frame["status"] == "ok").to_numpy()
    key = "test/auc" if ok.any() and frame.loc[ok, "test/auc"].notna().all() else "val/auc"
    auc = frame[key].to_numpy(dtype=float)
    err = np.abs(np.stack([auc - frame[f"{key}_ci_low"].to_numpy(dtype=float), frame[f"{key}_ci_high"].to_numpy(dtype=float) - auc]))
    ax.errorbar(auc[ok], y[ok], xerr=err[:, ok], fmt="o", capsize=3)
    for yi in y[~ok]:
        ax.text(0.5, yi, "failed", ha="center", va="center", color="tab:red")
    ax.set_yticks(y, frame["run"])
    ax.set_xlim(0, 1.02)  # room for points at 1.0
    ax.axvline(0.5, color="grey", lw=0.5, ls="--")
    ax.set_xlabel(f"{key} of the best epoch's checkpoint (95% bootstrap interval)")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
