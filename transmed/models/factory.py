"""Config -> model: the one function that builds a model from a config, everything included.

Like timm's `build_model_with_cfg`: `build_model` maps the `model.*` keys (and `train.checkpoint_stem`,
`data.drop_modalities`) to the registered constructor's arguments, loads the weights the config
names (`model.pretrained`, then `model.init_from`) and freezes what it says (`model.trainable_blocks`).
Training, evaluation, the benchmark, the studies and the exports all build through it; a model
rebuilt from saved weights too (`loading.rebuild_model`, which asks for no weights).
"""

from __future__ import annotations

from omegaconf import DictConfig
from torch import nn

from ..core.errors import ConfigError
from .finetune import prepare_model
from .registry import create_model, fixed_arguments, list_models, model_arguments
from .stem import UnknownBackbone


def dropped_modality_indices(cfg: DictConfig) -> list[int]:
    """Positions in `data.modalities` of `data.drop_modalities`; at least one modality must remain."""
    modalities, dropped = list(cfg.data.modalities), list(cfg.data.drop_modalities)
    unknown = [name for name in dropped if name not in modalities]
    if unknown:
        raise ConfigError(f"invalid value for config key 'data.drop_modalities': {unknown} not in data.modalities {modalities}")
    if set(modalities) <= set(dropped):
        raise ConfigError(f"invalid value for config key 'data.drop_modalities': it drops every modality of {modalities}")
    return [modalities.index(name) for name in dropped]


def model_kwargs(cfg: DictConfig, num_outputs: int) -> dict:
    """Constructor arguments for `cfg.model.name`: the config values its constructor declares.

    A name that fixes an argument (`transmed_small`: variant small) and a config that asks for another
    value (`model.variant=base`) is a ConfigError naming both keys.
    """
    m = cfg.model
    if m.name not in list_models():
        raise ConfigError(f"invalid value for config key 'model.name': {m.name!r}; registered models: {', '.join(list_models())}")
    offered = dict(
        num_modalities=len(cfg.data.modalities),
        num_outputs=num_outputs,
        backbone=m.backbone,
        pretrained=m.pretrained,
        variant=m.variant,
        depth=m.depth,
        stem_stage=m.stem_stage,
        grid_size=m.grid_size,
        slice_window=m.slice_window,
        slice_stride=m.slice_stride,
        slice_mode=m.slice_mode,
        dropout=m.dropout,
        drop_path=m.drop_path,
        pool=m.pool,
        fuse=m.fuse,
        fc_norm=m.fc_norm,
        layer_scale=m.layer_scale,
        stem_chunk=m.stem_chunk,
        channels_last=m.channels_last,
        checkpoint_stem=cfg.train.checkpoint_stem,
        drop_modalities=dropped_modality_indices(cfg),
        num_classifiers=3 if cfg.train.semi.method == "tri_net" else 1,
    )
    for key, value in fixed_arguments(m.name).items():
        if key in offered and offered[key] != value:
            raise ConfigError(
                f"conflicting config keys 'model.name' and 'model.{key}': model.name={m.name} fixes {key} {value!r}, "
                f"model.{key}={offered[key]!r}; use model.name=transmed model.{key}={offered[key]}, or model.{key}={value}"
            )
    accepted = model_arguments(m.name) - set(fixed_arguments(m.name))
    return {key: value for key, value in offered.items() if key in accepted}


def build_model(cfg: DictConfig, num_outputs: int, pretrained: bool = True) -> nn.Module:
    """The model a config describes: built, its weights loaded and its stem frozen as configured.

    `pretrained=False` loads no weights at all, neither `model.pretrained` nor `model.init_from`:
    saved weights follow (`loading.rebuild_model`). With `data.drop_modalities` the model sees those
    modalities as missing whenever it is in eval mode (its `drop_modalities`).
    """
    kwargs = model_kwargs(cfg, num_outputs)
    if not pretrained:
        kwargs["pretrained"] = False
    try:
        model = create_model(cfg.model.name, **kwargs)
    except UnknownBackbone as err:
        raise ConfigError(f"invalid value for config key 'model.backbone': {err}") from None
    prepare_model(model, cfg, init=pretrained)
    return model
