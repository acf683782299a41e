"""The five kinds of study (the roles a file's runs may take, the ones it needs, the analysis, its
settings, an extra measurement per run) and `load_study`, which reads a study file and checks it
against its kind before anything trains."""

from __future__ import annotations

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
from .analysis import Analysis, Results, analyse_depth, analyse_fusion, analyse_modes, analyse_stepwise
from .spec import FILE_KEYS, QUICK_KEYS, RUN_KEYS, RUN_REF, SEEDS_FULL, SEEDS_QUICK, Study, StudyRun, expand_run, split_scoped
from .uap import UAP_SETTINGS, analyse_uap, measure_uap


@dataclass(frozen=True)
class Kind:
    roles: tuple[str, ...]
    required: tuple[str, ...]
    analyse: Callable[[Results, Path], Analysis]
    settings: dict = field(default_factory=dict)
    measure: Callable[[Path, DictConfig, Study, Path], dict] | None = None  # extra per-run values


KINDS: dict[str, Kind] = {
    "depth": Kind(("imagenet", "scratch"), ("imagenet",), analyse_depth),
    "modes": Kind(("extractor", "finetune", "scratch"), ("extractor", "finetune"), analyse_modes),
    "uap": Kind(("pretrained", "scratch"), ("pretrained", "scratch"), analyse_uap, UAP_SETTINGS, measure_uap),
    "stepwise": Kind(("intermediate", "stepwise", "direct"), ("intermediate", "stepwise", "direct"), analyse_stepwise),
    "fusion": Kind(("transmed", "late_fusion", "mrnet", "cnn3d", "single"), ("transmed",), analyse_fusion),
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
