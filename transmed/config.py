"""Typed run configuration: dataclass schema, YAML files and dotted command-line overrides.

The schema is the contract of docs/architecture.md (config keys). `load_config` merges a YAML file and `key=value`
overrides into the schema with OmegaConf, so an unknown key or a wrong type is a `ConfigError`
naming the key (the command-line entry points turn it into exit code 2).
"""

from __future__ import annotations

import difflib
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException

from .core.errors import ConfigError


def min_slices_for(slice_mode: str, window: int) -> int:
    """The fewest slices a stack needs: one slice group (`model.slice_window`) in group mode, else one."""
    return window if slice_mode == "group" else 1


@dataclass
class SyntheticConfig:
    """Size of the generated dataset for `data.format: synthetic`."""

    num_train: int = 120
    num_valid: int = 60
    image_size: int = 256
    min_slices: int = 16
    max_slices: int = 32
    seed: int = 0
    fusion: bool = False  # each task's lesion in one plane only (`transmed synthetic --fusion`), with fusion_bound.json
    num_unlabelled: int = 0  # also write this many studies without labels in {root}/unlabelled (`--unlabelled N`)


@dataclass
class DataConfig:
    format: str = "mrnet"  # mrnet | nifti | synthetic
    root: str = "data/MRNet-v1.0"
    modalities: list[str] = field(default_factory=lambda: ["sagittal", "coronal", "axial"])
    tasks: list[str] = field(default_factory=lambda: ["abnormal", "acl", "meniscus"])
    image_size: int = 224
    num_slices: Optional[int] = None  # resample every stack to this many slices; None keeps them
    augment: bool = True
    augment_on: str = "device"  # device: one random transform per study on the batch, on the training device | loader: MONAI, per study, in the loader workers
    num_workers: int = 0
    cache_dir: Optional[str] = None  # on-disk cache of deterministic preprocessing
    cache_dtype: str = "auto"  # auto: cache in the source's type (uint8 for mrnet, float16 for nifti) | float32
    on_error: str = "raise"  # raise | skip
    label_column: str = "label"  # nifti: the labels.csv column holding the class
    classes: Optional[list[str]] = None  # nifti: class names in output order; None: sorted unique labels
    spacing: Optional[list[float]] = None  # nifti: resample to this voxel spacing; None: the first modality's grid
    slice_axis: int = 2  # nifti: slices are taken along this RAS axis (2: axial)
    num_folds: int = 5  # without a split column: stratified k-fold by patient
    fold: int = 0  # which fold is the validation set
    val_fraction: Optional[float] = None  # mrnet: carve validation out of train; MRNet's valid becomes test
    split_seed: int = 0  # seeds k-fold and val_fraction splits; apart from `seed`, so repeats see the same patients
    unlabelled_root: Optional[str] = None  # studies without labels, in data.root's format, for train.semi
    drop_modalities: list[str] = field(default_factory=list)  # inference (validation, evaluate.py) sees these as missing
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)


@dataclass
class ModelConfig:
    name: str = "transmed"
    variant: str = "tiny"  # tiny | small | base
    backbone: str = "resnet18"
    pretrained: Any = False  # bool, or a path to a local weights file
    stem_stage: int = -1  # which feature stage of the timm CNN feeds the tokens
    grid_size: int = 2  # each slice-image's feature map is pooled to grid_size x grid_size tokens
    slice_window: int = 3
    slice_stride: int = 1  # >1: a group every stride slices (a tail group repeats the last slice where needed)
    slice_mode: str = "group"  # group (adjacent slices as RGB) | replicate (one slice on 3 channels)
    depth: Optional[int] = None  # transformer depth; None takes the variant's default
    dropout: float = 0.1
    drop_path: float = 0.0
    pool: str = "cls"  # transmed: the head reads the class token (cls), the mean of the real tokens (mean) or each modality's mean (modality)
    fuse: str = "linear"  # transmed with pool=modality: linear | mlp (LayerNorm, Linear, GELU on the modalities' means, as late fusion's head)
    fc_norm: bool = False  # transmed with pool=mean|modality: LayerNorm on each pooled mean, not on every token (timm's fc_norm)
    layer_scale: Optional[float] = None  # transmed: initial scale of every residual branch (timm's init_values); null: none
    trainable_blocks: str = "all"  # 0..N top stem stages that train, or "all"
    init_from: Optional[str] = None  # start from another run's checkpoint (what matches is loaded)
    stem_chunk: Optional[int] = None  # push slice-images through the stem in chunks of this many
    channels_last: bool = False


@dataclass
class SemiConfig:
    """Learning from the studies of `data.unlabelled_root` (engine/semi.py)."""

    method: str = "none"  # none | pseudo_label (confidence-thresholded self-training) | tri_net (Chen et al. 2018)
    warmup_epochs: int = 3  # epochs on the labelled studies only (tri_net: with smeared labels) before pseudo-labelling
    threshold: float = 0.9  # a pseudo-label needs this probability (multilabel: p >= t or p <= 1 - t per task)
    ratio: int = 2  # pseudo-labelled studies per labelled study in each batch
    weight: float = 1.0  # the pseudo-labelled studies' mean loss is added to the labelled studies' with this weight (lambda_u)
    smearing: float = 0.2  # tri_net: std of the output-smearing noise on the labels during warmup
    dropout: float = 0.3  # tri_net: dropout on the head's input for pseudo-label editing
    passes: int = 5  # tri_net: dropout passes a pseudo-label must survive unchanged
    balance: bool = False  # share each round's N_t out by the labelled studies' class shares (per task: positives, negatives)
    round_size: int = 0  # N_0: round t keeps the min(N_0 2^(t-1), all) most confident studies per classifier (tri-net's N_t); 0: all


@dataclass
class TrainConfig:
    epochs: int = 20
    batch_size: int = 4
    lr: float = 3e-4
    weight_decay: float = 0.05
    warmup_epochs: float = 1.0
    grad_clip: float = 1.0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    amp: bool = True  # bf16 autocast where the device supports it (CUDA)
    # the stem's lr is lr * backbone_lr_mult; null (default): 0.1 when the stem starts from weights
    # (model.pretrained true or a file, or model.init_from), 1.0 from scratch; the run's config.yaml holds the number
    backbone_lr_mult: Optional[float] = None
    resume: Optional[str] = None  # auto | PATH
    deterministic: bool = False  # torch deterministic algorithms (GPU runs too)
    modality_dropout: float = 0.0  # drop whole modalities of a training study (at least one kept)
    compile: bool = False  # torch.compile the model
    checkpoint_stem: bool = False  # activation checkpointing of the stem
    accumulate: int = 1  # gradient accumulation steps
    class_weights: bool = True  # pos_weight (multilabel) / inverse-frequency class weights; false: calibrated probabilities
    # temperature scaling fitted on the validation split at the end of training (one per task, or one for all
    # classes), stored in the checkpoints' label spec and used by evaluate, predict and every export; false: T = 1
    calibrate: bool = True
    semi: SemiConfig = field(default_factory=SemiConfig)


@dataclass
class WandbConfig:
    mode: str = "offline"  # offline | online | disabled
    project: str = "transmed"
    entity: Optional[str] = None
    group: Optional[str] = None
    tags: list[str] = field(default_factory=list)


@dataclass
class Config:
    seed: int = 42
    output_dir: str = "runs"
    run_name: Optional[str] = None  # None: "{config file stem}-{timestamp}"
    overwrite: bool = False
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    wandb: WandbConfig = field(default_factory=WandbConfig)


CHOICES: dict[str, tuple[str, ...]] = {
    "data.format": ("mrnet", "nifti", "synthetic"),
    "data.on_error": ("raise", "skip"),
    "data.augment_on": ("device", "loader"),
    "data.cache_dtype": ("auto", "float32"),
    "model.variant": ("tiny", "small", "base"),
    "model.slice_mode": ("group", "replicate"),
    "model.pool": ("cls", "mean", "modality"),
    "model.fuse": ("linear", "mlp"),
    "train.semi.method": ("none", "pseudo_label", "tri_net"),
    "wandb.mode": ("offline", "online", "disabled"),
}


def _all_keys(node: Any, prefix: str = "") -> list[str]:
    keys = []
    if isinstance(node, DictConfig):
        for k in node.keys():
            full = f"{prefix}{k}"
            keys.append(full)
            keys.extend(_all_keys(node._get_node(k), full + "."))
    return keys


# a schema type -> what a config value of that type looks like, for error messages
EXPECTED = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}
LIST_OF = {int: "integers", float: "numbers", bool: "true/false values", str: "strings"}


def _schema_node(schema: DictConfig, path: str) -> Any:
    """The schema's node at a dotted `path`, or None."""
    node: Any = schema
    for part in path.split("."):
        node = node._get_node(part) if isinstance(node, DictConfig) and part in node else None
    return node


def _expected(schema: DictConfig, key: str) -> Optional[str]:
    """What the schema takes at `key` (`data.spacing[0]`: an element of `data.spacing`), or None when it cannot say."""
    path, index, _ = key.partition("[")
    node = _schema_node(schema, path) if path else None
    if node is None:
        return None
    if isinstance(node, ListConfig):
        element = node._metadata.element_type
        what = EXPECTED.get(element) if index else f"a list of {LIST_OF[element]} ([x, y])" if element in LIST_OF else "a list"
    else:
        what = EXPECTED.get(node._metadata.ref_type)
    return f"{what} or null" if what and node._metadata.optional and not index else what


def _section_given_a_value(err: OmegaConfBaseException, schema: DictConfig) -> Optional[str]:
    """`data=3`: OmegaConf names neither key nor section ("int is not a subclass of DataConfig"); say which section."""
    found = re.search(r"is not a subclass of (\w+)\. value: (.*)", getattr(err, "msg", None) or str(err))
    if found is None:
        return None
    for key in _all_keys(schema):
        node = _schema_node(schema, key)
        if isinstance(node, DictConfig) and node._metadata.object_type.__name__ == found.group(1):
            keys = ", ".join(f"{key}.{name}" for name in list(node.keys())[:2])
            return f"config key '{key}' is a section, not a value ({found.group(2)}): set its keys, such as {keys}"
    return None


def _explain(err: OmegaConfBaseException, schema: DictConfig, source: str) -> ConfigError:
    """One line naming the key, the value and what the key takes (OmegaConf's own message spans several lines)."""
    key = getattr(err, "full_key", None) or ""
    if isinstance(err, ConfigKeyError):
        hint = difflib.get_close_matches(key, _all_keys(schema), n=1)
        suggestion = f" Did you mean '{hint[0]}'?" if hint else ""
        return ConfigError(f"unknown config key '{key}' (from {source}).{suggestion}")
    section = None if key else _section_given_a_value(err, schema)
    if section is not None:
        return ConfigError(f"{section} (from {source})")
    expected = _expected(schema, key)
    if expected is None:
        msg = (getattr(err, "msg", None) or str(err)).strip().splitlines()[0]
        return ConfigError(f"invalid value for config key '{key}' (from {source}): {msg}")
    return ConfigError(f"invalid value for config key '{key}': {_shown(getattr(err, 'value', None))}; expected {expected} (from {source})")


def _known_keys(saved: DictConfig, schema: DictConfig) -> DictConfig:
    """A saved (checkpoint) config without keys this version's schema no longer has, with a warning:
    old checkpoints stay loadable when the schema drops a key."""
    known = set(_all_keys(schema))
    unknown = [key for key in _all_keys(saved) if key not in known]
    stale = [key for key in unknown if key.rpartition(".")[0] not in unknown]  # the outermost unknown keys
    for key in stale:
        parent, _, name = key.rpartition(".")
        node = OmegaConf.select(saved, parent) if parent else saved
        node.pop(name)
    if stale:
        warnings.warn(f"the checkpoint's config has keys this version does not know, ignored: {', '.join(stale)}", stacklevel=3)
    return saved


def _merge(base: DictConfig, other: Any, schema: DictConfig, source: str) -> DictConfig:
    try:
        return OmegaConf.merge(base, other)
    except OmegaConfBaseException as err:
        raise _explain(err, schema, source) from None


def _validate(cfg: DictConfig) -> None:
    for key, choices in CHOICES.items():
        value = OmegaConf.select(cfg, key)
        if value not in choices:
            raise ConfigError(f"invalid value for config key '{key}': {value!r}; expected one of {list(choices)}")
    pretrained = cfg.model.pretrained
    if not isinstance(pretrained, (bool, str)):
        raise ConfigError(f"invalid value for config key 'model.pretrained': {pretrained!r}; expected true, false or a file path")
    tb = str(cfg.model.trainable_blocks)
    if tb != "all" and not tb.isdigit():
        raise ConfigError(f"invalid value for config key 'model.trainable_blocks': {tb!r}; expected a number of stages or 'all'")
    if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", str(cfg.train.device)):
        raise ConfigError(f"invalid value for config key 'train.device': {cfg.train.device!r}; expected auto, cpu, cuda, cuda:N or mps")
    if not cfg.data.modalities:
        raise ConfigError("config key 'data.modalities' is empty: give at least one modality")
    for key, (ok, expected) in RANGES.items():
        value = OmegaConf.select(cfg, key)
        if value is not None and not ok(value):
            raise ConfigError(f"invalid value for config key '{key}': {_shown(value)}; {expected}")
    _validate_combinations(cfg)


def _positive(v: Any) -> bool:
    return v > 0


def _at_least_0(v: Any) -> bool:
    return v >= 0


def _fraction(v: Any) -> bool:  # a probability that must leave something: 0 <= v < 1
    return 0 <= v < 1


def _shown(value: Any) -> str:
    return str(list(value)) if isinstance(value, ListConfig) else repr(value)


# key -> (check, what is expected); a null (None) value is not checked here (null means "unset" where allowed)
RANGES: dict[str, tuple[Any, str]] = {
    "seed": (lambda v: 0 <= v < 2**32, "must be an integer in 0..2**32-1"),
    "output_dir": (lambda v: str(v).strip() != "", "must be a folder name"),
    "run_name": (
        lambda v: all(part.strip() not in ("", ".", "..") for part in str(v).replace("\\", "/").split("/")),
        "must be a folder name under output_dir (group/name is fine; no '..', no leading '/')",
    ),
    "data.image_size": (_positive, "must be positive"),
    "data.num_workers": (_at_least_0, "must be 0 (load in the main process) or more"),
    "data.label_column": (lambda v: str(v).strip() != "", "must name a column of labels.csv"),
    "data.classes": (lambda v: len(v) >= 2 and len(set(v)) == len(v), "must list at least 2 distinct class names, or be null"),
    "data.spacing": (lambda v: len(v) == 3 and all(x > 0 for x in v), "must be 3 positive voxel sizes in mm, or null"),
    "data.slice_axis": (lambda v: v in (0, 1, 2), "must be 0, 1 or 2 (a RAS axis; 2: axial slices)"),
    "data.num_folds": (lambda v: v >= 2, "must be at least 2"),
    "data.fold": (_at_least_0, "must be 0 or more (a fold index)"),
    "data.val_fraction": (lambda v: 0 < v < 1, "must lie strictly between 0 and 1, or be null"),
    "data.split_seed": (lambda v: 0 <= v < 2**32, "must be an integer in 0..2**32-1"),
    "data.synthetic.num_train": (_positive, "must be positive"),
    "data.synthetic.num_valid": (_positive, "must be positive"),
    "data.synthetic.image_size": (_positive, "must be positive"),
    "data.synthetic.min_slices": (_positive, "must be positive"),
    "data.synthetic.seed": (_at_least_0, "must be 0 or more"),
    "model.grid_size": (_positive, "must be positive"),
    "model.slice_stride": (_positive, "must be positive"),
    "model.depth": (_positive, "must be positive (transformer layers), or null for the variant's depth"),
    "model.dropout": (_fraction, "must lie in [0, 1)"),
    "model.drop_path": (_fraction, "must lie in [0, 1)"),
    "model.layer_scale": (_positive, "must be positive (e.g. 1e-5), or null for no layer scale"),
    "model.stem_chunk": (_positive, "must be positive, or null (the whole batch at once)"),
    "train.epochs": (_positive, "must be positive"),
    "train.batch_size": (_positive, "must be positive"),
    "train.lr": (_positive, "must be positive (a negative rate would climb the loss)"),
    "train.weight_decay": (_at_least_0, "must be 0 or more"),
    "train.warmup_epochs": (_at_least_0, "must be 0 or more"),
    "train.grad_clip": (_at_least_0, "must be 0 (no clipping) or more"),
    "train.backbone_lr_mult": (_at_least_0, "must be 0 (frozen stem) or more, or null"),
    "train.modality_dropout": (_fraction, "must lie in [0, 1)"),
    "train.accumulate": (lambda v: v >= 1, "must be 1 (no accumulation) or more"),
    "data.synthetic.num_unlabelled": (_at_least_0, "must be 0 or more"),
    "train.semi.warmup_epochs": (_at_least_0, "must be 0 or more"),
    "train.semi.threshold": (lambda v: 0.5 <= v < 1, "must lie in [0.5, 1)"),
    "train.semi.ratio": (_positive, "must be positive"),
    "train.semi.weight": (_at_least_0, "must be 0 (the pseudo-labels change nothing) or more"),
    "train.semi.smearing": (_at_least_0, "must be 0 (no smearing) or more"),
    "train.semi.dropout": (_fraction, "must lie in [0, 1)"),
    "train.semi.passes": (_positive, "must be positive"),
    "train.semi.round_size": (_at_least_0, "must be 0 (every confident study from the first round) or more"),
}


def _validate_combinations(cfg: DictConfig) -> None:
    """Checks that involve several keys."""
    for key, example in (("data.modalities", "[T1,T2]"), ("data.tasks", "[abnormal,acl]")):
        values = list(OmegaConf.select(cfg, key))
        if any(not isinstance(v, str) for v in values):  # OmegaConf lets a nested list through a list[str]
            shown = OmegaConf.to_container(OmegaConf.select(cfg, key))
            raise ConfigError(f"invalid value for config key '{key}': {shown}; give a flat list of names, e.g. {key}={example}")
        if len(set(values)) != len(values):
            raise ConfigError(f"invalid value for config key '{key}': {values} names an entry twice")
    if cfg.data.format != "nifti" and not cfg.data.tasks:
        raise ConfigError(f"config key 'data.tasks' is empty: data.format={cfg.data.format} needs at least one task")
    m, syn = cfg.model, cfg.data.synthetic
    if m.slice_mode == "group" and m.slice_window != 3:
        raise ConfigError(
            f"invalid value for config key 'model.slice_window': {m.slice_window}; model.slice_mode=group stacks 3 adjacent slices "
            "as the RGB channels, so it must be 3 (or use model.slice_mode=replicate)"
        )
    if m.fuse != "linear" and m.pool != "modality":
        raise ConfigError(f"config key 'model.fuse={m.fuse}' needs model.pool=modality (model.pool is {m.pool!r}); set both, or model.fuse=linear")
    if m.fc_norm and m.pool == "cls":
        raise ConfigError("config key 'model.fc_norm=true' normalises pooled tokens and needs model.pool=mean or modality (model.pool is 'cls'); set model.pool, or model.fc_norm=false")
    need = min_slices_for(m.slice_mode, m.slice_window)
    if cfg.data.num_slices is not None and cfg.data.num_slices < need:
        raise ConfigError(
            f"invalid value for config key 'data.num_slices': {cfg.data.num_slices}; must be at least {need} "
            f"(one slice group of model.slice_window), or null to keep each stack's own slice count"
        )
    semi = cfg.train.semi
    if semi.method != "none" and not cfg.data.unlabelled_root:
        raise ConfigError(
            f"train.semi.method={semi.method} needs config key 'data.unlabelled_root': a folder of studies without labels "
            f"in data.root's format (transmed synthetic ROOT --unlabelled N writes one in ROOT/unlabelled)"
        )
    if semi.method != "none" and not str(m.name).startswith("transmed"):
        raise ConfigError(
            f"train.semi.method={semi.method} pseudo-labels with a TransMed model's heads; model.name={m.name} is not one "
            f"(use model.name=transmed, or train.semi.method=none)"
        )
    if syn.max_slices < syn.min_slices:
        raise ConfigError(
            f"invalid value for config key 'data.synthetic.max_slices': {syn.max_slices}; "
            f"must be at least data.synthetic.min_slices ({syn.min_slices})"
        )


def _parse_override(item: str) -> DictConfig:
    if "=" not in item:
        raise ConfigError(f"override {item!r} is not of the form key=value")
    key = item.split("=", 1)[0].strip()
    try:
        dotted = OmegaConf.from_dotlist([item])
    except OmegaConfBaseException as err:
        raise ConfigError(f"cannot parse override {item!r} for key '{key}': {err}") from None
    value = OmegaConf.select(dotted, key)
    keeps_none = "none" in CHOICES.get(key, ())  # `train.semi.method=none` is a choice, not null
    if isinstance(value, str) and value.lower() in ("null", "none") and not (keeps_none and value == "none"):
        OmegaConf.update(dotted, key, None)
    return dotted


CONFIGS = Path(__file__).resolve().parent.parent / "configs"  # the repository's configs/ (an editable install)


def find_config(path: str | Path) -> Path:
    """`path` itself when it is a file; else a bare name (`knee.yaml`, `studies/depth.yaml`) found in
    `./configs/` or the repository's `configs/` (where `configs/knee.yaml` is found from any folder too)."""
    path = Path(path)
    if path.is_file():
        return path
    if not path.is_absolute():
        inside = Path(*path.parts[1:]) if len(path.parts) > 1 and path.parts[0] == "configs" else path  # configs/knee.yaml elsewhere
        for candidate in (Path("configs") / path, CONFIGS / path, CONFIGS / inside):
            if candidate.is_file():
                return candidate
    raise ConfigError(f"config file not found: {path} (looked in the working folder and in configs/)")


def load_config(path: Optional[str | Path] = None, overrides: Sequence[str] = (), base: Optional[dict] = None) -> DictConfig:
    """Schema <- `base` dict (a checkpoint's config) <- YAML file <- dotted `key=value` overrides."""
    schema = OmegaConf.structured(Config)
    cfg, generated = schema, None
    if base is not None:
        cfg = _merge(cfg, _known_keys(OmegaConf.create(base), schema), schema, "checkpoint config")
    if path is not None:
        path = find_config(path)
        try:
            loaded = OmegaConf.load(path)
        except Exception as err:  # YAML syntax errors come from yaml, not OmegaConf
            if "Invalid loaded object type" not in str(err):  # OmegaConf's words for a top-level scalar
                raise ConfigError(f"cannot read config file {path}: {str(err).splitlines()[0]}") from None
            loaded = None
        if not isinstance(loaded, DictConfig):
            raise ConfigError(f"config file {path}: the top level must be a mapping of keys (data:, model:, train:, ...), not a list or a value")
        cfg = _merge(cfg, loaded, schema, str(path))
        if cfg.run_name is None:
            from datetime import datetime

            generated = cfg.run_name = f"{path.stem}-{datetime.now():%Y%m%d-%H%M%S}"
    for item in overrides:
        cfg = _merge(cfg, _parse_override(item), schema, f"override '{item}'")
    if cfg.run_name is None:
        cfg.run_name = "run"
    _validate(cfg)
    cfg.train.backbone_lr_mult = resolve_backbone_lr_mult(cfg)
    if cfg.train.resume == "auto" and cfg.run_name == generated:
        raise ConfigError(_resume_needs_run_name(cfg, Path(path).stem))
    return cfg


PRETRAINED_BACKBONE_LR_MULT = 0.1  # `train.backbone_lr_mult` when unset and the stem starts from weights


def resolve_backbone_lr_mult(cfg: DictConfig) -> float:
    """`train.backbone_lr_mult`, or when it is unset (null): 0.1 for a stem that starts from weights
    (`model.pretrained` true or a weights file, or `model.init_from` a checkpoint), 1.0 from scratch."""
    if cfg.train.backbone_lr_mult is not None:
        return float(cfg.train.backbone_lr_mult)
    from_weights = bool(cfg.model.pretrained) or bool(cfg.model.init_from)  # pretrained: a bool or a path (`_validate`)
    return PRETRAINED_BACKBONE_LR_MULT if from_weights else 1.0


def _resume_needs_run_name(cfg: DictConfig, stem: str) -> str:
    """Message for `train.resume=auto` without `run_name`: a fresh timestamped name has nothing to resume."""
    runs = sorted(Path(cfg.output_dir).glob(f"{stem}-*"), key=lambda p: p.stat().st_mtime)
    latest = f"; the latest is run_name={runs[-1].name}" if runs else ""
    return f"config key 'train.resume=auto' continues a named run: add run_name=NAME (a folder under {cfg.output_dir}/){latest}"


def to_dict(cfg: DictConfig) -> dict:
    """Plain, resolved dict (for checkpoints, W&B and `config.yaml`)."""
    return OmegaConf.to_container(cfg, resolve=True)


def save_config(cfg: DictConfig, path: str | Path) -> None:
    Path(path).write_text(OmegaConf.to_yaml(cfg, resolve=True))


def is_list(value: Any) -> bool:
    return isinstance(value, (list, tuple, ListConfig))
