"""Evaluate a checkpoint on a split: metrics with bootstrap intervals, predictions and plots."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import pandas as pd
import torch
from omegaconf import DictConfig

from ..config import to_dict
from ..core.device import resolve_device
from ..core.errors import DataError, ResultExistsError, UsageError
from ..core.io import write_json
from ..core.labels import LabelSpec, Predictions
from ..data import build_dataset, build_loader, report_skipped
from ..engine.inference import predict
from ..engine.logger import wandb_tags
from ..models.loading import load_trained
from .metrics import compute_metrics, to_jsonable, youden_thresholds
from .model_card import robustness_results, split_statistics, write_model_card
from .plots import plot_calibration, plot_confusion, plot_pr, plot_roc


def run_folder(checkpoint: str | Path) -> Path:
    """Where a checkpoint's results go by default: `{run}` for `{run}/checkpoints/x.pt`, else its own folder."""
    path = Path(checkpoint).resolve()
    return path.parent.parent if path.parent.name == "checkpoints" else path.parent


def output_index(spec: LabelSpec, name: str) -> int:
    """Position of a task (multilabel) or class (multiclass) name among the model's outputs."""
    if name not in spec.names:
        raise UsageError(f"unknown task or class {name!r}; the model predicts {list(spec.names)}")
    return spec.names.index(name)


def predict_split(model: torch.nn.Module, cfg: DictConfig, spec: LabelSpec, split: str) -> Predictions:
    """Predictions for every study of `split`; those `data.on_error=skip` left out are in `.skipped`."""
    dataset = build_dataset(cfg, split, train=False)
    preds = predict(model, build_loader(cfg, dataset, train=False), spec, resolve_device(cfg.train.device), cfg.train.amp)
    preds.skipped = list(dataset.skipped)
    return preds


def uncalibrated(preds: Predictions, spec: LabelSpec) -> np.ndarray:
    """The probabilities before temperature scaling (`preds.probs` when the model has none), in float64:
    float32 ones saturate at 0 and 1 beyond a logit of about 17, and the ties would lose the ranking AUC reads."""
    return spec.probabilities(torch.from_numpy(preds.logits).double(), calibrated=False).numpy()


def predictions_frame(preds: Predictions, spec: LabelSpec) -> pd.DataFrame:
    """`id`, `prob/<name>` (calibrated where the model carries a temperature), `logit/<name>` (the
    model's output: its ranking is the uncalibrated one AUC uses) and `label/<name>` (0/1; one-hot
    for multi-class) per study."""
    frame = pd.DataFrame({"id": preds.ids})
    for k, name in enumerate(spec.names):
        frame[f"prob/{name}"] = preds.probs[:, k]
    for k, name in enumerate(spec.names):
        frame[f"logit/{name}"] = preds.logits[:, k]
    if preds.labels is not None:
        onehot = preds.labels if spec.kind == "multilabel" else np.eye(spec.num_outputs)[preds.labels.astype(int)]
        for k, name in enumerate(spec.names):
            frame[f"label/{name}"] = onehot[:, k].astype(int)
    return frame


def evaluate_checkpoint(
    checkpoint: str | Path, split: str = "valid", out: Optional[str | Path] = None, overrides: Sequence[str] = (), n_bootstrap: int = 1000
) -> Path:
    """Writes metrics.json, MODEL_CARD.md (model_card.py), predictions.csv, roc/pr/confusion/calibration PNGs;
    returns the output folder.

    Studies `data.on_error=skip` left out of `split` are listed in `skipped.json` (their count in
    metrics.json), so a metric over fewer studies never passes unnoticed. Thresholds are 0.5, plus
    (when evaluating `test`) the Youden thresholds chosen on `valid`.
    """
    checkpoint = Path(checkpoint)
    out = Path(out) if out is not None else run_folder(checkpoint) / f"eval-{split}"
    if (out / "metrics.json").exists():
        raise ResultExistsError(f"{out} already holds an evaluation; choose another --out")
    model, cfg, spec, ckpt = load_trained(checkpoint, overrides)
    preds = predict_split(model, cfg, spec, split)
    if preds.labels is None:
        raise DataError(f"split {split!r} has no labels to evaluate against")
    names = list(spec.names)
    raw = uncalibrated(preds, spec)
    metrics = compute_metrics(preds.probs, preds.labels, names, spec.kind, n_bootstrap=n_bootstrap, seed=cfg.seed, uncalibrated=raw)
    if split == "test" and spec.kind == "multilabel":
        val = predict_split(model, cfg, spec, "valid")
        youden = youden_thresholds(val.probs, val.labels, names, spec.kind)
        metrics["youden"] = compute_metrics(
            preds.probs, preds.labels, names, spec.kind, thresholds=youden, n_bootstrap=n_bootstrap, seed=cfg.seed, uncalibrated=raw
        )
        metrics["thresholds_youden_from_valid"] = youden
    metrics["temperature"] = None if spec.temperature is None else list(spec.temperature)
    out.mkdir(parents=True, exist_ok=True)
    skipped = report_skipped(out / "skipped.json", preds)
    metrics.update(split=split, checkpoint=str(checkpoint), epoch=ckpt["epoch"], skipped=len(skipped))
    jsonable = to_jsonable(metrics)
    write_json(out / "metrics.json", jsonable)
    write_model_card(
        out,
        cfg,
        spec,
        checkpoint=checkpoint,
        epoch=ckpt["epoch"],
        metrics=jsonable,
        n_bootstrap=n_bootstrap,
        model=model,
        splits=split_statistics(cfg, spec, evaluated=(split, preds.labels)),
        robustness=robustness_results(run_folder(checkpoint)),
    )
    predictions_frame(preds, spec).to_csv(out / "predictions.csv", index=False)
    plot_roc(raw, preds.labels, names, spec.kind, out / "roc.png", seed=cfg.seed)  # the ranking metrics' scores (compute_metrics)
    plot_pr(raw, preds.labels, names, spec.kind, out / "pr.png")
    plot_confusion(preds.probs, preds.labels, names, spec.kind, out / "confusion.png")
    before = None if spec.temperature is None else raw
    plot_calibration(preds.probs, preds.labels, names, spec.kind, out / "calibration.png", uncalibrated=before)
    log_evaluation_run(out, cfg, metrics, ckpt.get("wandb_id"))
    return out


def flat_metrics(metrics: dict) -> dict[str, float]:
    """`{"tasks": {t: {m: {"value", "ci"}}}, "overall": ..., "youden": ...}` -> `{"t/m": v, "t/m/ci_low": lo, ...}`.

    Task names are top-level sections; `overall` stays a section; Youden-threshold metrics get a
    `youden/` prefix. Non-finite values are left out (W&B summaries cannot hold NaN usefully).
    """
    flat: dict[str, float] = {}
    for prefix, block in (("", metrics), ("youden/", metrics.get("youden", {}))):
        sections = {**block.get("tasks", {}), **({"overall": block["overall"]} if "overall" in block else {})}
        for section, values in sections.items():
            for name, entry in values.items():
                key = f"{prefix}{section}/{name}"
                for suffix, value in (("", entry["value"]), ("/ci_low", entry["ci"][0]), ("/ci_high", entry["ci"][1])):
                    if np.isfinite(value):
                        flat[key + suffix] = float(value)
    return flat


def log_evaluation_run(out: Path, cfg: DictConfig, metrics: dict, training_run_id: Optional[str] = None) -> None:
    """Mirrors an evaluation to W&B as a `job_type="eval"` run in the training run's group.

    Named `{run_name}-eval-{split}`, files under `{out}/wandb`, mode from `wandb.mode` (nothing
    happens when disabled). Logs the flat metrics (`flat_metrics`), `n` and every PNG of `out`.
    """
    if cfg.wandb.mode == "disabled":
        return
    import wandb

    os.environ.setdefault("WANDB_SILENT", "true")
    split = metrics["split"]
    run = wandb.init(
        mode=cfg.wandb.mode,
        project=cfg.wandb.project,
        entity=cfg.wandb.entity,
        group=cfg.wandb.group,
        tags=wandb_tags(cfg.wandb.tags),
        name=f"{cfg.run_name}-eval-{split}",
        job_type="eval",
        dir=str(out),
        config={
            **to_dict(cfg),
            "eval": {"split": split, "checkpoint": metrics["checkpoint"], "epoch": metrics["epoch"], "training_run_id": training_run_id},
        },
        reinit="finish_previous",
    )
    try:
        images = {f"plots/{png.stem}": wandb.Image(str(png)) for png in sorted(out.glob("*.png"))}
        run.log({**flat_metrics(metrics), "n": metrics["n"], **images})
    finally:
        run.finish()
