"""What a study file holds, as loaded: `Study` and its `StudyRun`s, the `each` expansion of a run entry,
`NAME:key=value` overrides, and one validated config per run. `kinds.load_study` reads the file."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from ...config import load_config
from ...core.errors import ConfigError
from ..ablation import format_value

FILE_KEYS = ("study", "title", "paper", "claim", "base", "group", "seeds", "overrides", "quick", "settings", "runs")
RUN_KEYS = ("name", "role", "set")
QUICK_KEYS = ("seeds", "overrides", "settings")
SEEDS_FULL, SEEDS_QUICK = 3, 1  # training seeds per run, when the file does not say
EACH = "each"
RUN_REF = "run:"


@dataclass
class StudyRun:
    name: str
    role: str
    values: dict[str, Any]  # key -> value, `each` expanded (`run:NAME` is resolved per seed by `study_configs`)
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
    seeds: list[int] = field(default_factory=lambda: [42])  # every run trains once per seed
    output_dir: str = "runs"

    @property
    def keys(self) -> list[str]:
        """Every key a run sets, in order of first appearance."""
        return list(dict.fromkeys(key for run in self.runs for key in run.values))


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
    from ...models.finetune import stem_stages
    from ...models.stem import CNNStem

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


def run_dir_name(study: Study, run: str, seed: int) -> str:
    """`{group}/{run}/seed-{seed}`: the run name (under `output_dir`) of one run at one seed."""
    return f"{study.group}/{run}/seed-{seed}"


def resolve(study: Study, value: Any, seed: int) -> Any:
    """`run:NAME` -> the best checkpoint of the study's run NAME at the same seed; other values as they are."""
    if isinstance(value, str) and value.startswith(RUN_REF):
        return str(Path(study.output_dir) / run_dir_name(study, value[len(RUN_REF) :], seed) / "checkpoints" / "best.pt")
    return value


def study_configs(study: Study) -> list[tuple[StudyRun, int, DictConfig]]:
    """One validated config per run and seed (runs in order, each run's seeds together): base <- overrides
    <- the run's `set` <- its `NAME:key=value` overrides <- `seed`."""
    configs = []
    for run in study.runs:
        for seed in study.seeds:
            values = [f"{key}={format_value(resolve(study, value, seed))}" for key, value in run.values.items()]
            scoped = study.scoped.get(run.name, [])
            cfg = load_config(study.base, [*study.overrides, *values, *scoped, f"seed={seed}", f"run_name={run_dir_name(study, run.name, seed)}"])
            cfg.wandb.group = study.group
            tags = [f"study={study.kind}", f"role={run.role}", f"seed={seed}", *(f"{key}={value}" for key, value in run.shown.items())]
            cfg.wandb.tags = [*cfg.wandb.tags, *tags]  # the W&B run gets them cut to 64 characters (`engine.logger.wandb_tags`)
            configs.append((run, seed, cfg))
    return configs
