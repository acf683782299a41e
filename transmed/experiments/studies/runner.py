"""Running a study: every run trained (and measured, for uap), then the comparison, `report.md` with the
measured table and each claim next to what was measured, and the W&B report run."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from omegaconf import OmegaConf

from ...core.errors import RunExistsError
from ...core.io import atomic_write
from ...core.progress import progress
from ...core.tables import markdown_table
from ...engine.trainer import holds_run
from ..ablation import Ablation, attempt, format_value, train_and_measure, write_comparison
from .analysis import Analysis, Results
from .kinds import KINDS, load_study
from .spec import study_configs
from .stats import FAILS, HOLDS, INCONCLUSIVE, NOT_MEASURED


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
    seeds: int | list[int] | None = None,
) -> tuple[Path, pd.DataFrame]:
    """Trains (and for uap, attacks) every run of the study file once per seed, then writes the
    comparison and `report.md`; returns the study folder and the per-run, per-seed table."""
    study = load_study(path, overrides, base, group, quick, seeds)
    kind = KINDS[study.kind]
    configs = study_configs(study)
    out_dir = Path(study.output_dir) / study.group
    refuse_taken(configs, out_dir)
    rows = []
    for i, (run, seed, cfg) in enumerate(progress(configs, desc=f"study {study.group}", unit="run"), start=1):
        print(f"[{i}/{len(configs)}] {cfg.run_name} ({run.role}, seed {seed})", flush=True)
        run_dir = Path(cfg.output_dir) / cfg.run_name
        row: dict[str, Any] = {"run": run.name, "role": run.role, "seed": seed, "dir": str(run_dir)}
        row.update({key: format_value(OmegaConf.select(cfg, key)) for key in study.keys})
        row.update(train_and_measure(cfg, n_bootstrap))
        if row["status"] == "ok" and kind.measure is not None:
            extra = attempt(lambda run_dir=run_dir, cfg=cfg: kind.measure(run_dir, cfg, study, out_dir))
            if extra["status"] == "ok":
                row.update({k: v for k, v in extra.items() if k != "status"})
            else:
                row["status"] = extra["status"].replace("failed:", "measurement failed:", 1)
        rows.append(row)
    frame = pd.DataFrame(rows)
    for column in ("test/auc", "test/auc_ci_low", "test/auc_ci_high"):
        if column not in frame:
            frame[column] = np.nan
    ablation = Ablation(study.base, study.group, [{**run.values, "seed": seed} for run, seed, _ in configs])
    write_comparison(frame.assign(run=[f"{r} seed-{s}" for r, s in zip(frame["run"], frame["seed"])]), ablation, study.overrides, out_dir)
    results = Results(study, frame, [cfg for _, _, cfg in configs], auc_key(frame), n_bootstrap)
    analysis = kind.analyse(results, out_dir)
    write_report(results, analysis, out_dir)
    log_study(results, analysis, out_dir)
    return out_dir, frame


def refuse_taken(configs: list, out_dir: Path) -> None:
    """Stops before any training when runs of the study already exist and neither `train.resume` nor
    `overwrite` is given: each run would fail on its own, and the report of those failures would
    replace the study's report."""
    taken = [Path(cfg.output_dir) / cfg.run_name for _, _, cfg in configs if holds_run(Path(cfg.output_dir) / cfg.run_name)]
    if taken and not any(cfg.train.resume or cfg.overwrite for _, _, cfg in configs):
        raise RunExistsError(
            f"study folder {out_dir} already holds {len(taken)} of its {len(configs)} runs (first: {taken[0]}); "
            "finish them with train.resume=auto, write elsewhere with --group NAME, or replace them with overwrite=true"
        )


def shown_value(key: str, value: str) -> str:
    if key == "model.init_from" and value.startswith("run:"):
        return f"run {value[4:]}"  # the study's own run, at the same seed
    if key == "model.pretrained" and "/" in value:
        return Path(value).name  # a weights file
    return value


def measured_table(results: Results) -> str:
    """One row per run: its values and the mean over seeds of AUC and seconds per epoch, with intervals."""
    study = results.study
    rows = []
    for run in study.runs:
        ok = results.ok(run.name)
        row = {"run": run.name, "role": run.role, **{key: shown_value(key, format_value(run.values.get(key, ""))) for key in study.keys}}
        row[f"{results.split} AUC [95% CI]"] = results.auc(run.name).text() if ok else ""
        row["sec/epoch [95% CI]"] = results.seconds(run.name).text(".2f") if ok else ""
        statuses = [str(r["status"]) for r in results.rows(run.name, ok=False)]
        row["seeds ok"] = f"{sum(s == 'ok' for s in statuses)}/{len(statuses)}"
        rows.append(row)
    return markdown_table(rows)


def per_seed_table(results: Results) -> str:
    rows = []
    for _, r in results.frame.iterrows():
        ok = r["status"] == "ok"
        key = results.auc_key
        rows.append(
            {
                "run": r["run"],
                "seed": str(int(r["seed"])),
                f"{results.split} AUC [95% CI over studies]": f"{r[key]:.3f} [{r[f'{key}_ci_low']:.3f}, {r[f'{key}_ci_high']:.3f}]" if ok else "",
                "valid AUC (chose the epoch)": f"{r['val/auc']:.3f}" if ok else "",
                "best epoch": str(int(r["best_epoch"])) if ok else "",
                "trainable params": f"{int(r['params/trainable']):,}" if ok else "",
                "sec/epoch": f"{r['sec/epoch']:.2f}" if ok else "",
                "status": r["status"],
            }
        )
    return markdown_table(rows)


def write_report(results: Results, analysis: Analysis, out_dir: Path) -> Path:
    study = results.study
    seeds = results.seeds
    split_note = (
        "AUC on the test split, which took no part in choosing any run's epoch (valid chose it), mean over tasks (or macro "
        "over classes)."
        if results.split == "test"
        else "**Warning**: AUC on valid, which also chose each run's best epoch (optimistic, alike for every run); give the data "
        "a test split (e.g. data.val_fraction=0.2 for the MRNet layout, or `split` rows in labels.csv)."
    )
    seed_note = (
        f"Every run trained once per seed ({', '.join(map(str, seeds))}); an arm is the mean over its seeds, and each verdict "
        "follows the paired difference of the two arms (per seed, on the same evaluation studies), with a 95% interval from "
        "one bootstrap that resamples seeds and studies together. A verdict states a direction only when that interval "
        "excludes 0; otherwise it is inconclusive (a difference is neither shown nor excluded)."
        if len(seeds) > 1
        else f"Every run trained once (seed {seeds[0]}): the intervals cover the evaluation studies, not the training noise, so "
        "a verdict describes one draw of training; run the full study (3 seeds) before drawing a conclusion. A verdict states "
        "a direction only when the paired difference's 95% interval excludes 0."
    )
    verdicts = [c.verdict for c in analysis.comparisons]
    lines = [
        f"# {study.title}",
        "",
        f"Study `{study.kind}` from `{study.path}`, group `{study.group}`" + (" (quick settings)" if study.quick else "")
        + f", {len(seeds)} seed(s).",
        f"Base config `{study.base}`" + (f"; overrides `{' '.join(study.overrides)}`" if study.overrides else "") + ".",
        "",
        f"**Paper**: {study.paper}" if study.paper else "",
        "",
        f"**Claim**: {study.claim}" if study.claim else "",
        "",
        "## Claim vs measured",
        "",
        f"Measured on the {results.split} split" + (", which did not choose the epoch." if results.split == "test" else ", which also chose the epoch."),
        "",
        markdown_table(
            [c.row() for c in analysis.comparisons], columns=["claim", "compared", "measured", "difference [95% CI]", "verdict", "note"]
        ),
        "",
        (
            f"Verdicts: {sum(v == HOLDS for v in verdicts)} hold, {sum(v == FAILS for v in verdicts)} do not hold, "
            f"{sum(v.startswith(INCONCLUSIVE) for v in verdicts)} inconclusive, {sum(v == NOT_MEASURED for v in verdicts)} not measured. "
            + seed_note
        ),
        "",
        *[f"- {note}" for note in analysis.notes],
        "",
        "## Measured",
        "",
        measured_table(results),
        "",
        (
            f"{split_note} Seconds per epoch: training only; they depend on what else the machine runs, so compare them from one "
            "otherwise idle machine."
        ),
        "",
        "## Per seed",
        "",
        per_seed_table(results),
        "",
    ]
    for heading, table in analysis.tables:
        lines += [f"## {heading}", "", table, ""]
    for caption, figure in [*analysis.figures, ("AUC per run and seed (`transmed ablate`'s plot)", out_dir / "comparison.png")]:
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
            "seeds": study.seeds,
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
