"""The six kinds of study (the roles a file's runs may take, the ones it needs, the analysis, its
settings, an extra measurement per run, a kind's own expansion of the runs) and `load_study`, which
reads a study file and checks it against its kind before anything trains."""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig

from ...config import find_config, load_config
from ...core.errors import ConfigError
from ..ablation import format_value
from .analysis import Analysis, Results, analyse_depth, analyse_fusion, analyse_modes, analyse_semi, analyse_stepwise, measure_last
from .spec import FILE_KEYS, QUICK_KEYS, RUN_KEYS, RUN_REF, SEEDS_FULL, SEEDS_QUICK, Study, StudyRun, expand_run, split_scoped
from .uap import UAP_SETTINGS, analyse_uap, measure_uap


@dataclass(frozen=True)
class Kind:
    roles: tuple[str, ...]
    required: tuple[str, ...]
    analyse: Callable[[Results, Path], Analysis]
    settings: dict = field(default_factory=dict)
    measure: Callable[[Path, DictConfig, Study, Path], dict] | None = None  # extra per-run values
    # the kind's own expansion of the file's runs (after `each`): (file, runs, settings, base config) -> (entry, run) pairs
    expand: Callable[[Path, list[StudyRun], dict, DictConfig], list[tuple[str, StudyRun]]] | None = None


# ---------------------------------------------------------------------------------------------
# The semi study's labelled fractions

SEMI_SETTINGS = {
    "pool": 240,  # training studies per fraction's synthetic set: round(fraction * pool) labelled, the rest unlabelled
    "fractions": [0.1, 0.25, 0.5],  # one synthetic set (and one run per entry) per labelled fraction; [] or null: runs as written
    "bar_fraction": 0.1,  # issue 23's bar: at this fraction, tri_net - labelled >= bar_auc (mean over >= 3 seeds)
    "bar_auc": 0.03,
}
SEMI_METHODS = {"labelled": "none", "pseudo_label": "pseudo_label", "tri_net": "tri_net"}  # role -> train.semi.method


def fraction_label(fraction: float) -> str:
    """0.1 -> "10pct", 0.125 -> "12.5pct": the suffix of a fraction's run names and data root."""
    return f"{fraction * 100:.4g}pct"


def expand_fractions(path: Path, runs: list[StudyRun], settings: dict, cfg: DictConfig) -> list[tuple[str, StudyRun]]:
    """Each run once per labelled fraction, fraction by fraction: `{name}-{pct}pct` on the synthetic set
    `{data.root}-{pct}pct` of `pool` training studies, round(fraction * pool) of them labelled
    (data.synthetic.num_train) and the rest unlabelled (data.synthetic.num_unlabelled, in {root}/unlabelled,
    which the pseudo_label and tri_net runs read as data.unlabelled_root). Every run of a fraction has the
    same synthetic settings, so they share one generated set; `run:NAME` becomes that fraction's run NAME.
    Each run's train.semi.method must match its role."""
    for run in runs:
        method = run.values.get("train.semi.method", cfg.train.semi.method)
        if method != SEMI_METHODS[run.role]:
            raise ConfigError(
                f"study file {path}: run '{run.name}': role {run.role} trains with train.semi.method={SEMI_METHODS[run.role]}, "
                f"the run has {method}"
            )
    for key in ("bar_fraction", "bar_auc"):
        if not isinstance(settings.get(key), (int, float)) or isinstance(settings.get(key), bool):
            raise ConfigError(f"study file {path}: setting '{key}' must be a number, got {settings.get(key)!r}")
    fractions, pool = settings.get("fractions"), settings.get("pool")
    if fractions is None or fractions == []:
        return [(run.name, run) for run in runs]  # the runs as written (e.g. real data with its own data.unlabelled_root)
    if not isinstance(pool, int) or isinstance(pool, bool) or pool < 2:
        raise ConfigError(f"study file {path}: setting 'pool' must be a number of training studies >= 2, got {pool!r}")
    if not isinstance(fractions, list) or not all(
        isinstance(f, (int, float)) and not isinstance(f, bool) and 0 < f < 1 for f in fractions
    ):
        raise ConfigError(f"study file {path}: setting 'fractions' must be a list of labelled fractions in (0, 1), e.g. [0.1, 0.25], got {fractions!r}")
    if cfg.data.format != "synthetic":
        raise ConfigError(
            f"study file {path}: setting 'fractions' splits a synthetic set (data.format=synthetic), not data.format={cfg.data.format}; "
            "for other data set fractions: [] and give the runs data.unlabelled_root"
        )
    labels = [fraction_label(f) for f in fractions]
    if len(set(labels)) != len(labels):
        raise ConfigError(f"study file {path}: setting 'fractions' repeats a fraction: {fractions}")
    expanded = []
    for fraction, label in zip(fractions, labels):
        labelled = round(fraction * pool)
        held_out = math.floor(labelled * cfg.data.val_fraction) if cfg.data.val_fraction is not None else 0
        if not 1 <= labelled < pool or (cfg.data.val_fraction is not None and not 1 <= held_out < labelled):
            raise ConfigError(
                f"study file {path}: fraction {fraction} of a pool of {pool} labels {labelled} studies"
                + (f", of which data.val_fraction={cfg.data.val_fraction} holds out {held_out} to choose the epoch" if cfg.data.val_fraction is not None else "")
                + "; each fraction needs labelled studies to train on (and to choose the epoch) and unlabelled ones"
            )
        root = f"{cfg.data.root}-{label}"
        for run in runs:
            values = {
                **{key: f"{value}-{label}" if isinstance(value, str) and value.startswith(RUN_REF) else value for key, value in run.values.items()},
                "data.root": root,
                "data.synthetic.num_train": labelled,
                "data.synthetic.num_unlabelled": pool - labelled,
            }
            if run.role != "labelled":
                values["data.unlabelled_root"] = f"{root}/unlabelled"
            shown = {key: format_value(value) for key, value in values.items()}
            expanded.append((run.name, StudyRun(f"{run.name}-{label}", run.role, values, shown)))
    return expanded


KINDS: dict[str, Kind] = {
    "depth": Kind(("imagenet", "scratch"), ("imagenet",), analyse_depth),
    "modes": Kind(("extractor", "finetune", "scratch"), ("extractor", "finetune"), analyse_modes),
    "uap": Kind(("pretrained", "scratch"), ("pretrained", "scratch"), analyse_uap, UAP_SETTINGS, measure_uap),
    "stepwise": Kind(("intermediate", "stepwise", "direct"), ("intermediate", "stepwise", "direct"), analyse_stepwise),
    "fusion": Kind(("transmed", "late_fusion", "mrnet", "cnn3d", "single"), ("transmed",), analyse_fusion),
    "semi": Kind(tuple(SEMI_METHODS), ("labelled", "tri_net"), analyse_semi, SEMI_SETTINGS, measure_last, expand=expand_fractions),
}


def _override_list(value: Any, where: str) -> list[str]:
    if value is None:
        return []
    if isinstance(value, dict):  # {key: value} is accepted too
        return [f"{key}={format_value(v)}" for key, v in value.items()]
    if not isinstance(value, list) or not all(isinstance(item, str) and "=" in item for item in value):
        raise ConfigError(f"{where}: expected a list of key=value overrides, got {value!r}")
    return list(value)


def load_study(
    path: str | Path,
    overrides: Sequence[str] = (),
    base: str | None = None,
    group: str | None = None,
    quick: bool = False,
    seeds: int | list[int] | None = None,
) -> Study:
    """Reads and expands a study file (a typo fails here, before anything trains); `seeds` replaces the file's."""
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
    group = (group or str(spec.get("group") or path.stem)) + ("-quick" if quick else "")  # a quick run never lands in a full study's folder
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
    base_seen = base_cfg([])
    if seeds is not None:
        seeds = study_seeds(path, seeds, None, False, int(base_seen.seed))
    else:
        seeds = study_seeds(path, spec.get("seeds"), quick_spec.get("seeds") if quick else None, quick, int(base_seen.seed))

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
            runs.append(StudyRun(name, str(entry["role"]), values, shown))
            per_run[name] = own  # expanded runs keep their entry's
    if analysis.expand is not None:
        expanded = analysis.expand(path, runs, settings, base_seen)
        names = [run.name for _, run in expanded]
        twice = sorted({name for name in names if names.count(name) > 1})
        if twice:
            raise ConfigError(f"study file {path}: two runs are named {twice[0]!r}")
        runs, per_run = [run for _, run in expanded], {run.name: per_run[entry] for entry, run in expanded}
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
        seeds,
        str(base_seen.output_dir),
    )


def study_seeds(path: Path, full: Any, quick_value: Any, quick: bool, base_seed: int) -> list[int]:
    """The training seeds: a count N (the base config's seed and the N - 1 after it) or a list; by default
    3 seeds in a full run and 1 with --quick (`quick.seeds` replaces the file's `seeds` under --quick)."""
    value = quick_value if quick and quick_value is not None else (SEEDS_QUICK if quick else full if full is not None else SEEDS_FULL)
    if isinstance(value, bool) or not (
        (isinstance(value, int) and value >= 1)
        or (isinstance(value, list) and value and all(isinstance(v, int) and not isinstance(v, bool) for v in value))
    ):
        raise ConfigError(f"study file {path}: 'seeds' must be a count >= 1 or a non-empty list of integers, got {value!r}")
    seeds = list(range(base_seed, base_seed + value)) if isinstance(value, int) else list(value)
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"study file {path}: 'seeds' repeats a seed: {seeds}")
    return seeds
