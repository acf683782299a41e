"""W&B sweeps from the grid files (`transmed ablate FILE --sweep OUT.yaml`): the ablation or study file
stays the one home of a grid, and the sweep is written from it, trains nothing and is not kept in the
repository.

Each point of the grid (an ablation run; a study run, its `each` expanded, at every seed) becomes one
W&B run of `train.py --config BASE wandb.mode=online wandb.group=GROUP [overrides] ${args_no_hyphens}`,
where the W&B agent renders each parameter as `key=value` (Python's `str` of the value, which the
config loader reads as YAML). A W&B grid is one product of its parameters, so:

- points that are the product of their keys' values: one parameter per key (`model.backbone: [...]`);
- other points whose keys all lie in one section: one parameter named after the section, one value
  per point (`model: [{trainable_blocks: 0}, ..., {pretrained: false, trainable_blocks: all}]`),
  which the loader merges into that section (the W&B run config then shows the section as that value);
- points across sections (fusion's models and single modalities) have no grid spelling: an error.

A study's seeds are a `seed` parameter (a product with the points, as the study trains them).
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any, Optional, Sequence

import yaml

from ..config import find_config
from ..core.errors import ConfigError

PROGRAM = "train.py"  # the repository's root script: W&B agents run from the repository root
METRIC = {"name": "val/auc", "goal": "maximize"}


def read_spec(path: Path) -> Any:
    """The YAML of a grid file; a syntax error is one line."""
    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"cannot read {path}: {str(err).splitlines()[0]}") from None


def nest(values: dict[str, Any]) -> dict[str, Any]:
    """{"a.b": 1, "c": 2} -> {"a": {"b": 1}, "c": 2}."""
    nested: dict[str, Any] = {}
    for key, value in values.items():
        *parents, last = key.split(".")
        node = nested
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    return nested


def grid_parameters(points: list[dict[str, Any]], where: str) -> dict[str, dict[str, list]]:
    """W&B `parameters` whose grid is exactly `points` (see the module docstring)."""
    keys = list(dict.fromkeys(key for point in points for key in point))
    if not keys:
        raise ConfigError(f"{where}: no run varies a key, so there is nothing to sweep")
    options: dict[str, list] = {key: [] for key in keys}
    for point in points:
        for key, value in point.items():
            if value not in options[key]:
                options[key].append(value)
    product = [dict(zip(keys, combo)) for combo in itertools.product(*options.values())]
    if len(product) == len(points) and all(point in points for point in product):
        return {key: {"values": values} for key, values in options.items()}
    sections = {key.split(".")[0] for key in keys}
    if len(sections) > 1 or any("." not in key for key in keys):
        raise ConfigError(
            f"{where}: its runs vary keys in {' and '.join(sorted(sections))} and are no product of their values, which a W&B "
            "grid (one product of parameters) cannot hold; train it with `transmed study`/`transmed ablate`, or split the grid"
        )
    (section,) = sections
    return {section: {"values": [nest(point).get(section, {}) for point in points]}}


def sweep_config(base: str, group: str, overrides: Sequence[str], parameters: dict[str, dict[str, list]]) -> dict[str, Any]:
    """A grid sweep of `train.py` from `base`: every run online in W&B group `group`, then `overrides`, then the point."""
    command = ["${env}", "${interpreter}", "${program}", "--config", base, "wandb.mode=online", f"wandb.group={group}"]
    return {
        "name": group,
        "program": PROGRAM,
        "method": "grid",
        "metric": dict(METRIC),
        "parameters": parameters,
        "command": [*command, *overrides, "${args_no_hyphens}"],
    }


def ablation_sweep(path: Path, overrides: Sequence[str], base: Optional[str], group: Optional[str]) -> dict[str, Any]:
    """The sweep of an ablation file's grid; every run's config is validated first."""
    from .ablation import load_ablation, run_configs

    ablation = load_ablation(path, base, group)
    run_configs(ablation, overrides)  # a typo fails here, not in the agent
    return sweep_config(ablation.base, ablation.group, overrides, grid_parameters(ablation.runs, f"ablation file {path}"))


def study_sweep(path: Path, overrides: Sequence[str], base: Optional[str], group: Optional[str]) -> dict[str, Any]:
    """The sweep of a study file: each run's `set` (`each` expanded by `load_study`, `NAME:key=value`
    folded in) is one point, times a `seed` parameter; the file's overrides go on the command."""
    from .studies.kinds import load_study
    from .studies.spec import RUN_REF, study_configs

    study = load_study(path, overrides, base, group)
    points = []
    for run in study.runs:
        refs = [f"{key}: {value}" for key, value in run.values.items() if isinstance(value, str) and value.startswith(RUN_REF)]
        if refs:
            raise ConfigError(
                f"study file {path}: run '{run.name}' starts from another run ({refs[0]}); a W&B grid runs its points independently"
            )
        scoped = dict(item.split("=", 1) for item in study.scoped.get(run.name, []))
        points.append({**run.values, **{key: yaml.safe_load(value) for key, value in scoped.items()}})
    if any("seed" in point for point in points):
        raise ConfigError(f"study file {path}: a run sets 'seed', which the study's seeds set")
    study_configs(study)  # a typo fails here, not in the agent
    parameters = {**grid_parameters(points, f"study file {path}"), "seed": {"values": list(study.seeds)}}
    return sweep_config(study.base, study.group, study.overrides, parameters)


def write_sweep(
    path: str | Path, out: str | Path, overrides: Sequence[str] = (), base: Optional[str] = None, group: Optional[str] = None
) -> dict[str, Any]:
    """Writes the W&B sweep of an ablation or study file (one with a `study:` key) to `out`; returns it."""
    try:
        path = find_config(path)
    except ConfigError:
        raise ConfigError(f"ablation or study file not found: {path}") from None
    spec = read_spec(path)
    make = study_sweep if isinstance(spec, dict) and "study" in spec else ablation_sweep
    sweep = make(path, overrides, base, group)
    header = (
        f"# W&B sweep of {path}, written by `transmed ablate {path} --sweep {out}`; edit that file, not this one.\n"
        f"# From the repository root: wandb sweep {out}   then   wandb agent ENTITY/PROJECT/SWEEP_ID\n"
    )
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    head = {key: value for key, value in sweep.items() if key != "command"}
    body = yaml.safe_dump(head, sort_keys=False, default_flow_style=None, width=120)
    out.write_text(header + body + yaml.safe_dump({"command": sweep["command"]}, default_flow_style=False))  # one argument a line
    return sweep
