"""The analyses of the depth, modes, stepwise and fusion studies: what they read (`Results`), what they
return (`Analysis`: claims with verdicts, notes, tables, figures), and their plots. The uap study's
analysis is in `uap.py`."""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from omegaconf import DictConfig

from .spec import Study
from .stats import NAN, Comparison, Interval

# ---------------------------------------------------------------------------------------------
# What the analyses read


@dataclass
class Results:
    study: Study
    frame: pd.DataFrame  # one row per run (run, role, status, ablation's values, sec/epoch interval, extras)
    configs: list[DictConfig]
    auc_key: str  # "test/auc" or "val/auc"

    def rows(self, role: str | None = None, ok: bool = True) -> list[pd.Series]:
        return [r for _, r in self.frame.iterrows() if (role is None or r["role"] == role) and (not ok or r["status"] == "ok")]

    def config(self, run: str) -> DictConfig:
        return self.configs[[r.name for r in self.study.runs].index(run)]

    def auc(self, row: pd.Series | None) -> Interval:
        if row is None:
            return NAN
        k = self.auc_key
        return Interval(float(row[k]), float(row[f"{k}_ci_low"]), float(row[f"{k}_ci_high"]))

    @staticmethod
    def seconds(row: pd.Series | None) -> Interval:
        if row is None:
            return NAN
        return Interval(float(row["sec/epoch"]), float(row["sec/epoch_ci_low"]), float(row["sec/epoch_ci_high"]))

    def best(self, rows: list[pd.Series]) -> pd.Series | None:
        """The row with the highest AUC (None when no row has one)."""
        rows = [r for r in rows if math.isfinite(float(r[self.auc_key]))]
        return max(rows, key=lambda r: float(r[self.auc_key])) if rows else None

    def one(self, role: str) -> pd.Series | None:
        """The first run of `role`, finished or not (a failed run's measures are missing: "not measured")."""
        rows = self.rows(role, ok=False)
        return rows[0] if rows else None


@dataclass
class Analysis:
    comparisons: list[Comparison]
    notes: list[str] = field(default_factory=list)
    tables: list[tuple[str, str]] = field(default_factory=list)  # (heading, Markdown)
    figures: list[tuple[str, Path]] = field(default_factory=list)  # (caption, PNG)


def is_pretrained(cfg: DictConfig) -> bool:
    return bool(cfg.model.pretrained) and cfg.model.name != "cnn3d"


def pretrained_note(results: Results, roles: Sequence[str]) -> list[str]:
    """A warning when the runs that should start from ImageNet do not (e.g. a base with model.pretrained=false)."""
    runs = [run.name for run in results.study.runs if run.role in roles and not is_pretrained(results.config(run.name))]
    if not runs:
        return []
    return [
        (
            f"**Warning**: {', '.join(runs)} should start from ImageNet weights but have model.pretrained=false "
            "(random weights), so these runs do not test the claim; use a base with ImageNet weights "
            "(configs/demo-transfer.yaml, or model.pretrained=FILE from `transmed weights import`)."
        )
    ]


# ---------------------------------------------------------------------------------------------
# The analyses


def analyse_depth(results: Results, out_dir: Path) -> Analysis:
    """Kandel & Castelli 2020: the top blocks only against the whole network, and the time it takes."""
    imagenet = results.rows("imagenet", ok=False)
    full = next((r for r in imagenet if str(r["model.trainable_blocks"]) == "all"), None)
    partial = results.best([r for r in imagenet if str(r["model.trainable_blocks"]) != "all" and r["status"] == "ok"])
    scratch = results.one("scratch")
    label = lambda r: "best partial depth" if r is None else str(r["run"])
    select = "the best partial depth is chosen on the same split, which favours it"
    comparisons = [
        Comparison(
            "Tuning only the top blocks generalises as well as or better than tuning the whole network",
            label(partial),
            label(full),
            results.auc(partial),
            results.auc(full),
            "higher",
            "auc",
            select,
        ),
        Comparison(
            "Tuning only the top blocks saves training time",
            label(partial),
            label(full),
            results.seconds(partial),
            results.seconds(full),
            "lower",
            "seconds",
            "sec/epoch, training only",
        ),
        Comparison(
            "(context, not the paper's claim) ImageNet initialisation beats training from scratch",
            label(full),
            label(scratch),
            results.auc(full),
            results.auc(scratch),
            "higher",
            "auc",
        ),
    ]
    figure = out_dir / "depth.png"
    plot_panels(results, figure, [("AUC", results.auc), ("sec/epoch", results.seconds)], results.study.title)
    return Analysis(comparisons, pretrained_note(results, ["imagenet"]), figures=[("AUC and seconds per epoch per run", figure)])


def analyse_modes(results: Results, out_dir: Path) -> Analysis:
    """Kim et al. 2022: a frozen ImageNet stem as feature extractor against fine-tuning it."""
    extractor, finetune, scratch = results.one("extractor"), results.one("finetune"), results.one("scratch")
    label = lambda r: "" if r is None else str(r["run"])
    backbone = results.configs[0].model.backbone
    comparisons = [
        Comparison(
            "A feature extractor loses no accuracy against fine-tuning",
            label(extractor),
            label(finetune),
            results.auc(extractor),
            results.auc(finetune),
            "higher",
            "auc",
            "'no loss' is shown only by a higher interval; overlapping ones neither show nor exclude a loss",
        ),
        Comparison(
            "A feature extractor saves compute",
            label(extractor),
            label(finetune),
            results.seconds(extractor),
            results.seconds(finetune),
            "lower",
            "seconds",
            "sec/epoch, training only",
        ),
        Comparison(
            "(context) fine-tuning from ImageNet beats training from scratch",
            label(finetune),
            label(scratch),
            results.auc(finetune),
            results.auc(scratch),
            "higher",
            "auc",
        ),
    ]
    notes = pretrained_note(results, ["extractor", "finetune"])
    if not re.match(r"(resnet|inception)", backbone):
        notes.append(f"The recommendation is about ResNet and Inception stems; this study ran `{backbone}`.")
    figure = out_dir / "modes.png"
    plot_panels(results, figure, [("AUC", results.auc), ("sec/epoch", results.seconds)], results.study.title)
    return Analysis(comparisons, notes, figures=[("AUC and seconds per epoch per transfer mode", figure)])


def analyse_stepwise(results: Results, out_dir: Path) -> Analysis:
    """Qu et al. 2018: ImageNet -> intermediate data -> target against ImageNet -> target."""
    stepwise, direct = results.one("stepwise"), results.one("direct")
    label = lambda r: "" if r is None else str(r["run"])
    comparisons = [
        Comparison(
            "Stepwise fine-tuning (ImageNet -> intermediate -> target) beats fine-tuning ImageNet weights on the target directly",
            label(stepwise),
            label(direct),
            results.auc(stepwise),
            results.auc(direct),
            "higher",
            "auc",
        ),
    ]
    notes = pretrained_note(results, ["intermediate", "direct"])
    for run in results.study.runs:
        if run.role == "intermediate":
            cfg = results.config(run.name)
            notes.append(
                f"Intermediate run `{run.name}`: data.format={cfg.data.format}, data.root=`{cfg.data.root}`, tasks {list(cfg.data.tasks)}, "
                f"modalities {list(cfg.data.modalities)}; its AUC in the table is on its own data. The stepwise run loads every "
                "tensor whose name and shape match (a head of another size keeps its fresh initialisation)."
            )
    figure = out_dir / "stepwise.png"
    plot_panels(results, figure, [("AUC", results.auc)], results.study.title)
    return Analysis(comparisons, notes, figures=[("AUC per run (the intermediate on its own data)", figure)])


def analyse_fusion(results: Results, out_dir: Path) -> Analysis:
    """TransMed (Dai, Gao & Liu 2021): transformer fusion against simpler fusion and single modalities."""
    transmed = results.one("transmed")
    label = lambda r: "" if r is None else str(r["run"])
    comparisons = []
    for role, what in (
        ("late_fusion", "late fusion of the same stem"),
        ("mrnet", "MRNet (a CNN per modality, max over slices)"),
        ("cnn3d", "a 3D CNN"),
    ):
        for other in results.rows(role, ok=False):
            row = other if other["status"] == "ok" else None
            comparisons.append(
                Comparison(
                    f"Transformer fusion beats {what}",
                    label(transmed),
                    str(other["run"]),
                    results.auc(transmed),
                    results.auc(row),
                    "higher",
                    "auc",
                )
            )
    single = results.best(results.rows("single"))
    comparisons.append(
        Comparison(
            "Fusing all modalities beats the best single modality",
            label(transmed),
            "best single modality" if single is None else str(single["run"]),
            results.auc(transmed),
            results.auc(single),
            "higher",
            "auc",
            "the best single modality is chosen on the same split, which favours it",
        )
    )
    figure = out_dir / "fusion.png"
    plot_panels(results, figure, [("AUC", results.auc), ("sec/epoch", results.seconds)], results.study.title)
    return Analysis(
        comparisons,
        pretrained_note(results, ["transmed", "late_fusion", "mrnet", "single"]),
        figures=[("AUC and seconds per epoch per model", figure)],
    )


# ---------------------------------------------------------------------------------------------
# Plots


def _errorbars(ax, labels: list[str], intervals: list[Interval], xlabel: str, xlim: tuple[float, float] | None = None) -> None:
    y = np.arange(len(labels))[::-1]
    for yi, interval in zip(y, intervals):
        if not interval.measured:
            ax.text(0.5, yi, "not measured", ha="center", va="center", color="tab:red", transform=ax.get_yaxis_transform())
            continue
        err = None
        if interval.has_interval:
            err = [[interval.value - interval.low], [interval.high - interval.value]]
        ax.errorbar([interval.value], [yi], xerr=err, fmt="o", capsize=3, color="tab:blue")
    ax.set_yticks(y, labels)
    ax.set_xlabel(xlabel)
    if xlim:
        ax.set_xlim(*xlim)


def plot_panels(results: Results, path: Path, panels: list[tuple[str, Callable]], title: str) -> None:
    """One panel per measure (AUC, seconds per epoch): a point per run with its 95% interval."""
    from matplotlib.figure import Figure

    rows = results.rows(ok=False)
    labels = [str(r["run"]) for r in rows]
    fig = Figure(figsize=(4.5 * len(panels), 1.4 + 0.4 * len(rows)))
    axes = np.atleast_1d(fig.subplots(1, len(panels), sharey=True))
    for ax, (name, measure) in zip(axes, panels):
        intervals = [measure(r) if r["status"] == "ok" else NAN for r in rows]
        split = results.auc_key.split("/")[0]
        _errorbars(
            ax,
            labels,
            intervals,
            f"{split} {name} (95% interval)" if name == "AUC" else f"{name} (95% t-interval)",
            (0, 1.02) if name == "AUC" else None,
        )
        if name == "AUC":
            ax.axvline(0.5, color="grey", lw=0.5, ls="--")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120, bbox_inches="tight")


def plot_fooling(results: Results, path: Path, rate: Callable) -> None:
    from matplotlib.figure import Figure

    labels, intervals = [], []
    for row in results.rows(ok=False):
        for name, what in (("fooling/train", "training UAP"), ("fooling/natural", "natural UAP"), ("random/natural", "random")):
            labels.append(f"{row['run']}: {what}")
            intervals.append(rate(row, name))
    fig = Figure(figsize=(6, 1.4 + 0.35 * len(labels)))
    ax = fig.subplots()
    _errorbars(ax, labels, intervals, "fooling rate (95% Wilson interval)", (0, 1.02))
    ax.set_title(results.study.title)
    fig.tight_layout()
    fig.savefig(path, dpi=120, bbox_inches="tight")
