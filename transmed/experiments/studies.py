"""Seed studies (`transmed study FILE`): a published claim about transfer learning or fusion, tested
on any config, in one command that trains the runs and writes `report.md` with its PNGs.

A study file (`configs/studies/*.yaml`) is YAML:

    study: depth                       # the analysis: depth | modes | uap | stepwise | fusion
    title: How deeply to fine-tune the ImageNet stem
    paper: Kandel & Castelli 2020, Appl. Sci. 10:3359
    claim: Fine-tuning the whole network is not always best; ...
    base: demo-transfer.yaml           # the config every run starts from (--base replaces it)
    group: study-depth                 # W&B group and output folder (--group replaces it; --quick adds -quick)
    overrides: [train.epochs=8]        # key=value for every run (optional)
    quick:                             # what --quick adds: short runs for a CPU (optional)
      overrides: [train.epochs=2]
      settings: {max_iter: 3}
    settings: {}                       # the analysis' own settings (uap: zeta, norm, ...)
    runs:                              # in order; each one training run
      - name: blocks                   # folder name
        role: imagenet                 # what the analysis takes the run for (each study has its roles)
        set: {model.trainable_blocks: each}

In `set`, `each` expands the entry into one run per value the base config allows, named
`{name}-{value}`: `model.trainable_blocks: each` -> 0 .. (stages of the stem - 1) and all;
`data.modalities: each` -> each single modality. `model.init_from: run:NAME` starts from the best
checkpoint of the study's earlier run NAME. Overrides on the command line apply to every run;
`NAME:key=value` (a run's name or role before the key) to those runs only, e.g.
`intermediate:data.root=/data/other`.

Every run trains as in `transmed ablate` (one W&B group, a failed run is a row with its error, AUC
with a 95% bootstrap interval on test where the data has it, else on valid, which also chose the
epoch) and gets a t-interval of its mean seconds per epoch. The uap study also crafts universal
adversarial perturbations per run (`evaluation.adversarial.run_robustness`); a fooling rate is a
proportion over studies and gets a Wilson interval.

Under `{output_dir}/{group}/`: one folder per run, `comparison.{csv,md,png}` (as `ablate`),
`report.md` (the measured table, the plots, each claim next to what was measured) and its PNGs,
and a W&B run `{group}/report` in the group holding the tables and plots. A claim's verdict
compares two 95% intervals: "holds" or "does not hold" only when they are apart, "inconclusive"
when they overlap (the direction is not claimed then).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml
from omegaconf import DictConfig, OmegaConf

from ..config import find_config, load_config
from ..core.errors import ConfigError
from ..core.io import atomic_write
from ..core.progress import progress
from ..core.tables import markdown_table
from .ablation import Ablation, attempt, format_value, has_split, train_and_measure, write_comparison

FILE_KEYS = ("study", "title", "paper", "claim", "base", "group", "overrides", "quick", "settings", "runs")
RUN_KEYS = ("name", "role", "set")
QUICK_KEYS = ("overrides", "settings")
EACH = "each"
RUN_REF = "run:"
MAX_TAG = 64  # W&B refuses longer tags
Z95 = 1.959963984540054


# ---------------------------------------------------------------------------------------------
# Study files


@dataclass
class StudyRun:
    name: str
    role: str
    values: dict[str, Any]  # key -> value, `each` expanded, `run:NAME` resolved to a checkpoint path
    shown: dict[str, str] = field(default_factory=dict)  # key -> value as the file wrote it (`run:NAME`), for tags


@dataclass
class Study:
    path: Path
    kind: str
    title: str
    paper: str
    claim: str
    base: str
    group: str
    overrides: list[str]  # the file's, then --quick's, then the command line's (run-scoped ones removed)
    settings: dict[str, Any]
    runs: list[StudyRun]
    quick: bool = False
    scoped: dict[str, list[str]] = field(default_factory=dict)  # run name -> its own overrides (NAME:key=value)

    @property
    def keys(self) -> list[str]:
        """Every key a run sets, in order of first appearance."""
        return list(dict.fromkeys(key for run in self.runs for key in run.values))


def _override_list(value: Any, where: str) -> list[str]:
    if value is None:
        return []
    if isinstance(value, dict):  # {key: value} is accepted too
        return [f"{key}={format_value(v)}" for key, v in value.items()]
    if not isinstance(value, list) or not all(isinstance(item, str) and "=" in item for item in value):
        raise ConfigError(f"{where}: expected a list of key=value overrides, got {value!r}")
    return list(value)


def split_scoped(overrides: Sequence[str], names: set[str]) -> tuple[list[str], dict[str, list[str]]]:
    """`NAME:key=value` -> (the plain overrides, {NAME: [key=value, ...]}); NAME is a run name or role."""
    plain, scoped = [], {}
    for item in overrides:
        key = item.split("=", 1)[0]
        if ":" in key:
            name, rest = item.split(":", 1)
            if name not in names:
                raise ConfigError(f"override {item!r}: '{name}' is no run name or role of this study ({', '.join(sorted(names))})")
            scoped.setdefault(name, []).append(rest)
        else:
            plain.append(item)
    return plain, scoped


def stem_stage_count(cfg: DictConfig) -> int:
    """How many stages the config's timm stem has (what `model.trainable_blocks` counts)."""
    from ..models.finetune import stem_stages
    from ..models.stem import CNNStem

    if cfg.model.name == "cnn3d":
        raise ConfigError("model.trainable_blocks: each: cnn3d has no timm CNN stem")
    return len(stem_stages(CNNStem(cfg.model.backbone, False, cfg.model.stem_stage)))


def expand_run(entry: dict, base_cfg: Callable[[list[str]], DictConfig]) -> list[tuple[str, dict[str, Any]]]:
    """(name, values) per run of one `runs` entry: an `each` value becomes one run per allowed value."""
    values = dict(entry.get("set") or {})
    each = [key for key, value in values.items() if value == EACH]
    if len(each) > 1:
        raise ConfigError(f"study run '{entry['name']}': only one key may be 'each', got {each}")
    if not each:
        return [(entry["name"], values)]
    key = each[0]
    others = {k: v for k, v in values.items() if k != key}
    cfg = base_cfg([f"{k}={format_value(v)}" for k, v in others.items() if not str(v).startswith(RUN_REF)])
    if key == "model.trainable_blocks":
        options: list[Any] = [*range(stem_stage_count(cfg)), "all"]
    elif key == "data.modalities":
        options = [[modality] for modality in cfg.data.modalities]
    else:
        raise ConfigError(
            f"study run '{entry['name']}': '{key}: each' is not known; 'each' works for model.trainable_blocks and data.modalities"
        )
    runs = []
    for option in options:
        label = option[0] if isinstance(option, list) else option
        runs.append((f"{entry['name']}-{label}", {**values, key: option}))
    return runs


def load_study(
    path: str | Path, overrides: Sequence[str] = (), base: str | None = None, group: str | None = None, quick: bool = False
) -> Study:
    """Reads and expands a study file (a typo fails here, before anything trains)."""
    try:
        path = find_config(path)
    except ConfigError:
        raise ConfigError(f"study file not found: {path} (looked in the working folder and in configs/, e.g. studies/depth.yaml)") from None
    try:
        spec = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"cannot read study file {path}: {str(err).splitlines()[0]}") from None
    if not isinstance(spec, dict):
        raise ConfigError(f"study file {path}: the top level must be a mapping (study, base, runs, ...)")
    unknown = sorted(set(spec) - set(FILE_KEYS))
    if unknown:
        raise ConfigError(f"study file {path}: unknown key(s) {unknown}; expected {list(FILE_KEYS)}")
    kind = spec.get("study")
    if kind not in KINDS:
        raise ConfigError(f"study file {path}: 'study' must be one of {list(KINDS)}, got {kind!r}")
    analysis = KINDS[kind]
    base = base or spec.get("base")
    if not base:
        raise ConfigError(f"study file {path}: no 'base' config (give one in the file or with --base)")
    group = group or (str(spec.get("group") or path.stem) + ("-quick" if quick else ""))
    quick_spec = spec.get("quick") or {}
    if not isinstance(quick_spec, dict) or set(quick_spec) - set(QUICK_KEYS):
        raise ConfigError(f"study file {path}: 'quick' must be a mapping with {list(QUICK_KEYS)}, got {quick_spec!r}")
    settings = {**analysis.settings, **(spec.get("settings") or {})}
    file_overrides = _override_list(spec.get("overrides"), f"study file {path}: overrides")
    if quick:
        file_overrides += _override_list(quick_spec.get("overrides"), f"study file {path}: quick.overrides")
        settings.update(quick_spec.get("settings") or {})
    unknown = sorted(set(settings) - set(analysis.settings))
    if unknown:
        raise ConfigError(f"study file {path}: unknown setting(s) {unknown} for study '{kind}'; expected {sorted(analysis.settings)}")

    entries = spec.get("runs")
    if not isinstance(entries, list) or not entries:
        raise ConfigError(f"study file {path}: 'runs' must be a non-empty list of {{name, role, set}}")
    for entry in entries:
        if not isinstance(entry, dict) or "name" not in entry or "role" not in entry:
            raise ConfigError(f"study file {path}: each run needs a name and a role, got {entry!r}")
        if set(entry) - set(RUN_KEYS):
            raise ConfigError(f"study file {path}: run '{entry['name']}' has unknown key(s) {sorted(set(entry) - set(RUN_KEYS))}")
        if not re.fullmatch(r"[A-Za-z0-9_.+=-]+", str(entry["name"])):
            raise ConfigError(f"study file {path}: run name {entry['name']!r} must be filesystem-safe (letters, digits, _.+=-)")
        if entry["role"] not in analysis.roles:
            raise ConfigError(
                f"study file {path}: run '{entry['name']}': role must be one of {list(analysis.roles)}, got {entry['role']!r}"
            )
        if not isinstance(entry.get("set") or {}, dict):
            raise ConfigError(f"study file {path}: run '{entry['name']}': 'set' must be a mapping of key: value")
    plain, scoped = split_scoped(overrides, {str(e["name"]) for e in entries} | {str(e["role"]) for e in entries})
    all_overrides = [*file_overrides, *plain]
    # the base config as the runs see it (a run name, so train.resume=auto validates; nothing is written)
    base_cfg = lambda extra: load_config(base, [*all_overrides, *extra, f"run_name={group}/base"])
    output_dir = base_cfg([]).output_dir

    runs: list[StudyRun] = []
    per_run: dict[str, list[str]] = {}
    for entry in entries:
        own = [*scoped.get(str(entry["name"]), []), *scoped.get(str(entry["role"]), [])]
        for name, values in expand_run(entry, lambda extra, own=own: base_cfg([*extra, *own])):
            if any(run.name == name for run in runs):
                raise ConfigError(f"study file {path}: two runs are named '{name}'")
            shown = {key: format_value(value) for key, value in values.items()}
            for key, value in values.items():
                if isinstance(value, str) and value.startswith(RUN_REF):
                    ref = value[len(RUN_REF) :]
                    if not any(run.name == ref for run in runs):
                        raise ConfigError(f"study file {path}: run '{name}': {key}: {value}: no earlier run is named '{ref}'")
                    values[key] = str(Path(output_dir) / group / ref / "checkpoints" / "best.pt")
            runs.append(StudyRun(name, str(entry["role"]), values, shown))
            per_run[name] = own  # expanded runs keep their entry's
    missing = [role for role in analysis.required if not any(run.role == role for run in runs)]
    if missing:
        raise ConfigError(f"study file {path}: study '{kind}' needs runs with the role(s) {missing}")
    return Study(
        path,
        kind,
        str(spec.get("title") or kind),
        str(spec.get("paper") or ""),
        " ".join(str(spec.get("claim") or "").split()),
        str(base),
        group,
        all_overrides,
        settings,
        runs,
        quick,
        per_run,
    )


def study_configs(study: Study) -> list[DictConfig]:
    """One validated config per run: base <- overrides <- the run's `set` <- its `NAME:key=value` overrides."""
    configs = []
    for run in study.runs:
        values = [f"{key}={format_value(value)}" for key, value in run.values.items()]
        cfg = load_config(study.base, [*study.overrides, *values, *study.scoped.get(run.name, []), f"run_name={study.group}/{run.name}"])
        cfg.wandb.group = study.group
        tags = [f"study={study.kind}", f"role={run.role}", *(f"{key}={value}" for key, value in run.shown.items())]
        cfg.wandb.tags = [*cfg.wandb.tags, *(tag if len(tag) <= MAX_TAG else tag[: MAX_TAG - 3] + "..." for tag in tags)]
        configs.append(cfg)
    return configs


# ---------------------------------------------------------------------------------------------
# Intervals and verdicts


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


@dataclass(frozen=True)
class Kind:
    roles: tuple[str, ...]
    required: tuple[str, ...]
    analyse: Callable[[Results, Path], Analysis]
    settings: dict = field(default_factory=dict)
    measure: Callable[[Path, DictConfig, Study, Path], dict] | None = None  # extra per-run values


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
# The five analyses


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
# UAP study: the extra measurement per run and its analysis

UAP_SETTINGS = {
    "zeta": 0.04,  # UAP norm relative to the mean norm of a training slice image (both sources: the same norm)
    "norm": "l2",
    "step": 0.1,
    "max_iter": 10,
    "delta": 0.2,
    "random_trials": 5,
    "natural_images": "sample",  # a folder of photos, or "sample": matplotlib's (and scikit-image's) bundled photos
    "crops": 48,  # random crops per sample photo
}
SKIMAGE_PHOTOS = ("astronaut", "camera", "cat", "coffee", "rocket", "grass", "gravel", "brick")


def sample_photos() -> list[tuple[str, Any]]:
    """(name, PIL image) of the natural photos bundled with matplotlib and, where installed, scikit-image."""
    from matplotlib import cbook
    from PIL import Image

    photos = [("grace_hopper", Image.open(cbook.get_sample_data("grace_hopper.jpg")).convert("L"))]
    try:
        from skimage import data
    except ImportError:
        return photos
    for name in SKIMAGE_PHOTOS:
        try:
            array = np.asarray(getattr(data, name)())
        except Exception:  # noqa: BLE001, S112 - not bundled in this version, or needs a download
            continue
        image = Image.fromarray(array.astype(np.uint8) if array.dtype != np.uint8 else array)
        photos.append((name, image.convert("L")))
    return photos


def natural_image_folder(settings: dict, out_dir: Path, seed: int) -> Path:
    """The folder the natural-image UAP is crafted from: the setting's folder, or random crops of the
    sample photos written once to `{group}/natural-images/`."""
    if settings["natural_images"] != "sample":
        folder = Path(settings["natural_images"])
        if not folder.is_dir():
            raise ConfigError(f"study setting natural_images: folder not found: {folder}")
        return folder
    folder = out_dir / "natural-images"
    if folder.is_dir() and any(folder.glob("*.png")):
        return folder
    from PIL import Image

    tmp = folder.with_name(folder.name + ".tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for name, photo in sample_photos():
        width, height = photo.size
        for i in range(int(settings["crops"])):
            side = int(rng.uniform(0.35, 1.0) * min(width, height))
            x, y = int(rng.integers(0, width - side + 1)), int(rng.integers(0, height - side + 1))
            crop = photo.crop((x, y, x + side, y + side)).resize((128, 128), Image.BILINEAR)
            if rng.random() < 0.5:
                crop = crop.transpose(Image.FLIP_LEFT_RIGHT)
            crop.save(tmp / f"{name}-{i:03d}.png")
    tmp.rename(folder)
    return folder


def measure_uap(run_dir: Path, cfg: DictConfig, study: Study, out_dir: Path) -> dict:
    """A UAP from the training studies and one from natural images, both of the same norm, each with
    its random control; fooling rates with Wilson intervals on test (where the data has it) or valid."""
    from ..evaluation.adversarial import image_folder_batches, mean_slice_norm, run_robustness

    s = study.settings
    checkpoint = run_dir / "checkpoints" / "best.pt"
    split = "test" if has_split(cfg, "test") else "valid"
    common = {"norm": s["norm"], "split": split, "step": s["step"], "max_iter": int(s["max_iter"]), "delta": s["delta"]}
    common["random_trials"] = int(s["random_trials"])
    results = {}
    train_dir = run_dir / "uap-train"
    if not (train_dir / "uap.json").exists():  # a rerun (train.resume=auto) keeps what was measured
        run_robustness(checkpoint, zeta=float(s["zeta"]), source="train", out=train_dir, **common)
    results["train"] = json.loads((train_dir / "uap.json").read_text())
    folder = natural_image_folder(s, out_dir, int(cfg.seed))
    natural_dir = run_dir / "uap-natural"
    if not (natural_dir / "uap.json").exists():
        natural_norm = mean_slice_norm(image_folder_batches(folder, cfg, cfg.train.batch_size), s["norm"])
        zeta = float(s["zeta"]) * results["train"]["settings"]["mean_input_norm"] / natural_norm  # the training UAP's radius
        run_robustness(checkpoint, zeta=zeta, source=str(folder), out=natural_dir, **common)
    results["natural"] = json.loads((natural_dir / "uap.json").read_text())
    row: dict[str, Any] = {"uap/split": split}
    for source, result in results.items():
        n, trials = int(result["settings"]["n_eval"]), int(result["settings"]["random_trials"])
        fooled = wilson_interval(round(result["fooling_rate"] * n), n)
        random = wilson_interval(round(result["random_fooling_rate"] * n * trials), n * trials)
        for name, interval in ((f"fooling/{source}", fooled), (f"random/{source}", random)):
            row.update({name: interval.value, f"{name}_ci_low": interval.low, f"{name}_ci_high": interval.high})
        row.update(
            {
                f"uap/{source}/radius": result["settings"]["radius"],
                f"uap/{source}/zeta": result["settings"]["zeta"],
                f"uap/{source}/passes": result["settings"]["passes"],
                "uap/n_eval": n,
            }
        )
        if "auc" in result:
            row.update({"auc/clean": result["auc"]["clean"], f"auc/{source}_uap": result["auc"]["uap"]})
    return row


def analyse_uap(results: Results, out_dir: Path) -> Analysis:
    """Minagi, Hirano & Takemoto 2022: natural-image UAPs against random and training-image ones, pretrained and from scratch."""
    pretrained, scratch = results.one("pretrained"), results.one("scratch")
    label = lambda r: "" if r is None else str(r["run"])

    def rate(row: pd.Series | None, name: str) -> Interval:
        if row is None or f"{name}_ci_low" not in row or pd.isna(row.get(name)):
            return NAN
        return Interval(float(row[name]), float(row[f"{name}_ci_low"]), float(row[f"{name}_ci_high"]))

    p, s = label(pretrained), label(scratch)
    comparisons = [
        Comparison(
            "Natural-image UAPs fool far more often than random perturbations of the same norm (pretrained)",
            f"{p} natural UAP",
            f"{p} random",
            rate(pretrained, "fooling/natural"),
            rate(pretrained, "random/natural"),
            "higher",
            "rate",
        ),
        Comparison(
            "... and a little less often than UAPs from the training images (pretrained)",
            f"{p} natural UAP",
            f"{p} training UAP",
            rate(pretrained, "fooling/natural"),
            rate(pretrained, "fooling/train"),
            "lower",
            "rate",
            "the verdict is the direction; 'a little' is the size of the difference",
        ),
        Comparison(
            "Training from scratch reduces the vulnerability to natural-image UAPs",
            f"{s} natural UAP",
            f"{p} natural UAP",
            rate(scratch, "fooling/natural"),
            rate(pretrained, "fooling/natural"),
            "lower",
            "rate",
        ),
        Comparison(
            "... but does not remove it: natural-image UAPs still beat random (from scratch)",
            f"{s} natural UAP",
            f"{s} random",
            rate(scratch, "fooling/natural"),
            rate(scratch, "random/natural"),
            "higher",
            "rate",
        ),
    ]
    rows = []
    for row in results.rows(ok=False):
        for source, what in (("train", "training studies"), ("natural", "natural images")):
            if pd.isna(row.get(f"fooling/{source}", np.nan)):
                continue
            rows.append(
                {
                    "run": row["run"],
                    "role": row["role"],
                    "UAP from": what,
                    "radius": row[f"uap/{source}/radius"],
                    "zeta": row[f"uap/{source}/zeta"],
                    "fooling rate [95% CI]": rate(row, f"fooling/{source}").text(),
                    "random, same norm [95% CI]": rate(row, f"random/{source}").text(),
                    "AUC clean": row.get("auc/clean"),
                    "AUC with UAP": row.get(f"auc/{source}_uap"),
                    "passes": row[f"uap/{source}/passes"],
                    "studies": row["uap/n_eval"],
                }
            )
    formats = {"radius": ".3g", "zeta": ".3g", "AUC clean": ".3f", "AUC with UAP": ".3f", "passes": "d", "studies": "d"}
    tables = [("Fooling rates", markdown_table(rows, formats=formats) if rows else "no UAP was measured")]
    split = next((str(r["uap/split"]) for r in results.rows() if isinstance(r.get("uap/split"), str)), "valid")
    s_ = results.study.settings
    notes = pretrained_note(results, ["pretrained"])
    notes.append(
        f"Fooling rate: the share of {split} studies whose prediction changes (any task flips at 0.5, or the class changes), "
        f"with a Wilson 95% interval; the random control pools its {s_['random_trials']} perturbations. Both UAPs have the same "
        f"{s_['norm']} norm, zeta={s_['zeta']:g} times the mean norm of a training slice image (the natural UAP's zeta is rescaled "
        f"to its own inputs' norm). Natural images: `{s_['natural_images']}`"
        + (
            f" ({s_['crops']} random crops per photo of matplotlib's, and where installed scikit-image's, sample photos)."
            if s_["natural_images"] == "sample"
            else "."
        )
    )
    figure = out_dir / "uap.png"
    plot_fooling(results, figure, rate)
    return Analysis(comparisons, notes, tables, [("Fooling rates with 95% Wilson intervals", figure)])


KINDS: dict[str, Kind] = {
    "depth": Kind(("imagenet", "scratch"), ("imagenet",), analyse_depth),
    "modes": Kind(("extractor", "finetune", "scratch"), ("extractor", "finetune"), analyse_modes),
    "uap": Kind(("pretrained", "scratch"), ("pretrained", "scratch"), analyse_uap, UAP_SETTINGS, measure_uap),
    "stepwise": Kind(("intermediate", "stepwise", "direct"), ("intermediate", "stepwise", "direct"), analyse_stepwise),
    "fusion": Kind(("transmed", "late_fusion", "mrnet", "cnn3d", "single"), ("transmed",), analyse_fusion),
}


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


# ---------------------------------------------------------------------------------------------
# Running a study


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
