"""Evaluate a checkpoint on a split: metrics with bootstrap intervals, predictions and plots."""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import pandas as pd
import torch
from omegaconf import DictConfig

from ..config import load_config
from ..data import LabelSpec, build_dataset, build_loader
from ..engine.checkpoint import load_checkpoint
from ..engine.inference import Predictions, predict
from ..engine.utils import resolve_device, write_json
from ..models import build_model
from .metrics import compute_metrics, to_jsonable, youden_thresholds
from .plots import plot_calibration, plot_confusion, plot_pr, plot_roc


class ResultExistsError(RuntimeError):
    """An evaluation folder already holds results; they are never overwritten."""


def load_trained(checkpoint: str | Path, overrides: Sequence[str] = ()) -> tuple[torch.nn.Module, DictConfig, LabelSpec, dict]:
    """Model (eval mode, on the config's device), config with overrides, label spec and raw checkpoint."""
    ckpt = load_checkpoint(checkpoint)
    cfg = load_config(base=ckpt["config"], overrides=overrides)
    spec = LabelSpec(ckpt["label_spec"]["kind"], tuple(ckpt["label_spec"]["names"]))
    model = build_model(cfg, spec.num_outputs, pretrained=False)
    model.load_state_dict(ckpt["model"])
    return model.to(resolve_device(cfg.train.device)).eval(), cfg, spec, ckpt


def predict_split(model: torch.nn.Module, cfg: DictConfig, spec: LabelSpec, split: str) -> Predictions:
    loader = build_loader(cfg, build_dataset(cfg, split, train=False), train=False)
    return predict(model, loader, spec, resolve_device(cfg.train.device), cfg.train.amp)


def predictions_frame(preds: Predictions, spec: LabelSpec) -> pd.DataFrame:
    """`id`, `prob/<name>` and `label/<name>` (0/1; one-hot for multi-class) per study."""
    frame = pd.DataFrame({"id": preds.ids})
    for k, name in enumerate(spec.names):
        frame[f"prob/{name}"] = preds.probs[:, k]
    if preds.labels is not None:
        onehot = preds.labels if spec.kind == "multilabel" else np.eye(spec.num_outputs)[preds.labels.astype(int)]
        for k, name in enumerate(spec.names):
            frame[f"label/{name}"] = onehot[:, k].astype(int)
    return frame


def evaluate_checkpoint(checkpoint: str | Path, split: str = "valid", out: Optional[str | Path] = None, overrides: Sequence[str] = (), n_bootstrap: int = 1000) -> Path:
    """Writes metrics.json, predictions.csv, roc/pr/confusion/calibration PNGs; returns the output folder.

    Thresholds are 0.5, plus (when evaluating `test`) the Youden thresholds chosen on `valid`.
    """
    checkpoint = Path(checkpoint)
    out = Path(out) if out is not None else checkpoint.resolve().parent.parent / f"eval-{split}"
    if (out / "metrics.json").exists():
        raise ResultExistsError(f"{out} already holds an evaluation; choose another --out")
    model, cfg, spec, ckpt = load_trained(checkpoint, overrides)
    preds = predict_split(model, cfg, spec, split)
    if preds.labels is None:
        raise ValueError(f"split {split!r} has no labels to evaluate against")
    names = list(spec.names)
    metrics = compute_metrics(preds.probs, preds.labels, names, spec.kind, n_bootstrap=n_bootstrap, seed=cfg.seed)
    if split == "test" and spec.kind == "multilabel":
        val = predict_split(model, cfg, spec, "valid")
        youden = youden_thresholds(val.probs, val.labels, names, spec.kind)
        metrics["youden"] = compute_metrics(preds.probs, preds.labels, names, spec.kind, thresholds=youden, n_bootstrap=n_bootstrap, seed=cfg.seed)
        metrics["thresholds_youden_from_valid"] = youden
    metrics.update(split=split, checkpoint=str(checkpoint), epoch=ckpt["epoch"])
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "metrics.json", to_jsonable(metrics))
    predictions_frame(preds, spec).to_csv(out / "predictions.csv", index=False)
    plot_roc(preds.probs, preds.labels, names, spec.kind, out / "roc.png", seed=cfg.seed)
    plot_pr(preds.probs, preds.labels, names, spec.kind, out / "pr.png")
    plot_confusion(preds.probs, preds.labels, names, spec.kind, out / "confusion.png")
    plot_calibration(preds.probs, preds.labels, names, spec.kind, out / "calibration.png")
    return out
