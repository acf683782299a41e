"""k-fold cross-validation (`transmed cv`): trains every fold k < `data.num_folds` (`data.fold=k`) as the run `{run_name}/fold{k}`, all in the
W&B group `{run_name}`, then writes `{output_dir}/{run_name}/cv_summary.json`: each fold's
validation metrics and their mean and standard deviation over folds. `--epoch last` (default) takes
the last epoch, which the validation fold did not choose; `--epoch best` takes each fold's best
epoch by val/auc, which is optimistic because the same fold picked it.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from omegaconf import DictConfig

from ..core.errors import ConfigError
from ..core.io import write_json
from ..core.progress import progress
from ..data.nifti import read_labels
from ..engine import train

FOLD_FORMATS = ("nifti",)  # formats whose train/valid split is a fold of the data (MRNet's split is fixed)


def check_folds(cfg: DictConfig) -> None:
    """Refuses data whose validation set does not move with `data.fold`."""
    if cfg.data.format not in FOLD_FORMATS:
        raise ConfigError(
            f"cross-validation needs folds, which data.format={cfg.data.format!r} does not have "
            f"(its train/valid split is fixed); use one of {list(FOLD_FORMATS)}"
        )
    if "split" in read_labels(cfg.data.root, cfg.data.label_column).columns:
        raise ConfigError(
            f"cross-validation needs folds, but {cfg.data.root}/labels.csv has a split column, which fixes the validation set"
        )


def fold_configs(cfg: DictConfig) -> list[DictConfig]:
    """One config per fold: `data.fold=k`, run `{run_name}/fold{k}`, W&B group `{run_name}`."""
    check_folds(cfg)
    configs = []
    for k in range(cfg.data.num_folds):
        fold = copy.deepcopy(cfg)
        fold.data.fold = k
        fold.run_name = f"{cfg.run_name}/fold{k}"
        fold.wandb.group = cfg.run_name
        fold.wandb.tags = [*cfg.wandb.tags, f"fold={k}"]
        configs.append(fold)
    return configs


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and bool(np.isfinite(value))


def summarize_folds(run_dirs: Sequence[Path], epoch: str = "last") -> dict[str, Any]:
    """Per fold the `val/*` metrics of its `last` or `best` epoch; their mean and std (ddof=1) over the folds where finite."""
    if epoch not in ("last", "best"):
        raise ValueError(f"epoch must be 'last' or 'best', not {epoch!r}")
    folds = []
    for k, run_dir in enumerate(run_dirs):
        record = json.loads((Path(run_dir) / "summary.json").read_text())[epoch]
        folds.append(
            {
                "fold": k,
                "run_dir": str(run_dir),
                "epoch": record["epoch"],
                **{key: v for key, v in record.items() if key.startswith("val/")},
            }
        )
    keys = [key for key in folds[0] if key.startswith("val/")]
    mean, std = {}, {}
    for key in keys:
        values = np.array([fold[key] for fold in folds if _finite(fold.get(key))], dtype=float)
        mean[key] = float(values.mean()) if values.size else None
        std[key] = float(values.std(ddof=1)) if values.size > 1 else None
    return {"num_folds": len(folds), "metric_epoch": epoch, "folds": folds, "mean": mean, "std": std}


def run_cv(cfg: DictConfig, epoch: str = "last") -> Path:
    """Trains every fold, writes and returns `{output_dir}/{run_name}/cv_summary.json`."""
    folds = fold_configs(cfg)
    run_dirs = [train(fold) for fold in progress(folds, desc=f"cv {cfg.run_name}", unit="fold")]
    path = Path(cfg.output_dir) / cfg.run_name / "cv_summary.json"
    write_json(path, summarize_folds(run_dirs, epoch))
    return path
