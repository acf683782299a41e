"""Running a study: every run trained (and measured, for uap), then the comparison, `report.md` with the
measured table and each claim next to what was measured, and the W&B report run."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from omegaconf import OmegaConf

from ...core.io import atomic_write
from ...core.progress import progress
from ...core.tables import markdown_table
from ..ablation import Ablation, attempt, format_value, train_and_measure, write_comparison
from .analysis import Analysis, Results
from .kinds import KINDS, load_study
from .spec import study_configs
from .stats import FAILS, HOLDS, INCONCLUSIVE, NOT_MEASURED, Interval, mean_interval


def seconds_interval(run_dir: Path) -> Interval:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return mean_interval([json.loads(line)["sec/epoch"] for line in lines if line.strip()])


def auc_key(frame: pd.DataFrame) -> str:
    """test/auc when every finished run (but an intermediate one, on other data) has it, else val/auc."""
    rows = frame[(frame["status"] == "ok") & (frame["role"] != "intermediate")]
    return "test/auc" if len(rows) and rows["test/auc"].notna().all() else "val/auc"


def run_study(
    path: str | Path,
    overrides: Sequence[str] = (),
    base: str | None = None,
    group: str | None = None,
    quick: bool = False,
    n_bootstrap: int = 1000,
) -> tuple[Path, pd.DataFrame]:
    """Trains (and for uap, attacks) every run of the study file, then writes the comparison and
    `report.md`; returns the study folder and the per-run table."""
    study = load_study(path, overrides, base, group, quick)
    kind = KINDS[study.kind]
    configs = study_configs(study)
    out_dir = Path(configs[0].output_dir) / study.group
    rows = []
    for i, (run, cfg) in enumerate(progress(list(zip(study.runs, configs)), desc=f"study {study.group}", unit="run"), start=1):
        print(f"[{i}/{len(configs)}] {cfg.run_name} ({run.role})", flush=True)
        row: dict[str, Any] = {"run": run.name, "role": run.role, **{key: format_value(OmegaConf.select(cfg, key)) for key in study.keys}}
        row.update(train_and_measure(cfg, n_bootstrap))
        run_dir = Path(cfg.output_dir) / cfg.run_name
        if row["status"] == "ok":
            seconds = seconds_interval(run_dir)
            row.update({"sec/epoch_ci_low": seconds.low, "sec/epoch_ci_high": seconds.high})
            if kind.measure is not None:
                extra = attempt(lambda run_dir=run_dir, cfg=cfg: kind.measure(run_dir, cfg, study, out_dir))
                if extra["status"] == "ok":
                    row.update({k: v for k, v in extra.items() if k != "status"})
                else:
                    row["status"] = extra["status"].replace("failed:", "measurement failed:", 1)
        rows.append(row)
    frame = pd.DataFrame(rows)
    for column in ("sec/epoch_ci_low", "sec/epoch_ci_high", "test/auc", "test/auc_ci_low", "test/auc_ci_high"):
        if column not in frame:
            frame[column] = np.nan
    ablation = Ablation(study.base, study.group, [run.values for run in study.runs])
    write_comparison(frame, ablation, study.overrides, out_dir)
    results = Results(study, frame, configs, auc_key(frame))
    analysis = kind.analyse(results, out_dir)
    write_report(results, analysis, out_dir)
    log_study(results, analysis, out_dir)
    return out_dir, frame


def measured_table(results: Results) -> str:
    study = results.study
    rows = []
    for _, r in results.frame.iterrows():
        ok = r["status"] == "ok"
        row = {"run": r["run"], "role": r["role"]}
        for key in study.keys:
            value = str(r[key])
            if key == "model.init_from" and value.endswith("checkpoints/best.pt"):
                value = f"run {Path(value).parent.parent.name}"  # the study's own run
            elif key == "model.pretrained" and "/" in value:
                value = Path(value).name  # a weights file
            row[key] = value
        row[f"{results.auc_key} [95% CI]"] = results.auc(r).text() if ok else ""
        row["trainable params"] = f"{int(r['params/trainable']):,}" if ok else ""
        row["sec/epoch [95% CI]"] = results.seconds(r).text(".2f") if ok else ""
        row["best epoch"] = str(int(r["best_epoch"])) if ok else ""
        row["status"] = r["status"]
        rows.append(row)
    return markdown_table(rows)


def write_report(results: Results, analysis: Analysis, out_dir: Path) -> Path:
    study = results.study
    split = results.auc_key.split("/")[0]
    split_note = (
        "AUC on the test split (the runs never saw it), mean over tasks, with a 95% bootstrap interval."
        if split == "test"
        else "AUC on valid, which also chose each run's best epoch (optimistic, alike for every run; "
        "give the data a test split, e.g. data.val_fraction=0.25 for the MRNet layout), with a 95% bootstrap interval."
    )
    verdicts = [c.verdict for c in analysis.comparisons]
    lines = [
        f"# {study.title}",
        "",
        f"Study `{study.kind}` from `{study.path}`, group `{study.group}`" + (" (quick settings)" if study.quick else "") + ".",
        f"Base config `{study.base}`" + (f"; overrides `{' '.join(study.overrides)}`" if study.overrides else "") + ".",
        "",
        f"**Paper**: {study.paper}" if study.paper else "",
        "",
        f"**Claim**: {study.claim}" if study.claim else "",
        "",
        "## Claim vs measured",
        "",
        markdown_table([c.row() for c in analysis.comparisons], columns=["claim", "compared", "measured", "difference", "verdict", "note"]),
        "",
        (
            f"Verdicts: {sum(v == HOLDS for v in verdicts)} hold, {sum(v == FAILS for v in verdicts)} do not hold, "
            f"{sum(v.startswith(INCONCLUSIVE) for v in verdicts)} inconclusive, {sum(v == NOT_MEASURED for v in verdicts)} not measured. "
            "A verdict compares the two 95% intervals: it states a direction only when they are apart; where they overlap "
            "it is inconclusive (a difference is neither shown nor excluded)."
        ),
        "",
        *[f"- {note}" for note in analysis.notes],
        "",
        "## Measured",
        "",
        measured_table(results),
        "",
        (
            f"{split_note} Seconds per epoch: training only, mean over epochs with a 95% t-interval; they depend on what "
            "else the machine runs, so compare them from one otherwise idle machine."
        ),
        "",
    ]
    for heading, table in analysis.tables:
        lines += [f"## {heading}", "", table, ""]
    for caption, figure in [*analysis.figures, ("AUC per run (`transmed ablate`'s plot)", out_dir / "comparison.png")]:
        lines += [f"![{caption}]({figure.name})", ""]
    text = re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip() + "\n"
    path = out_dir / "report.md"
    atomic_write(path, lambda f: f.write(text), mode="w")
    return path


def log_study(results: Results, analysis: Analysis, out_dir: Path) -> None:
    """The report as one W&B run `{group}/report` (job type `study`) in the study's group."""
    cfg = results.configs[0]
    if cfg.wandb.mode == "disabled":
        return
    import os

    import wandb

    os.environ.setdefault("WANDB_SILENT", "true")
    study = results.study
    run = wandb.init(
        mode=cfg.wandb.mode,
        project=cfg.wandb.project,
        entity=cfg.wandb.entity,
        group=study.group,
        name=f"{study.group}/report",
        job_type="study",
        dir=str(out_dir),
        tags=[f"study={study.kind}"],
        reinit="finish_previous",
        config={
            "study": study.kind,
            "file": str(study.path),
            "base": study.base,
            "overrides": study.overrides,
            "quick": study.quick,
            "settings": study.settings,
        },
    )
    frame = results.frame.astype(object).where(results.frame.notna(), None).astype(str)
    claims = pd.DataFrame([c.row() for c in analysis.comparisons])
    images = {figure.stem: wandb.Image(str(figure)) for _, figure in analysis.figures if figure.is_file()}
    run.log({"runs": wandb.Table(dataframe=frame), "claims": wandb.Table(dataframe=claims), **images})
    for i, comparison in enumerate(analysis.comparisons):
        run.summary[f"claim/{i}"] = comparison.verdict
    run.finish()
