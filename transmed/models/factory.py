"""Config -> model: the one place that maps `model.*` keys to constructor arguments."""

from __future__ import annotations

from omegaconf import DictConfig
from torch import nn

from ..core.errors import ConfigError
from .finetune import drop_modalities_at_inference
from .registry import create_model, list_models, model_arguments
from .stem import UnknownBackbone


def model_kwargs(cfg: DictConfig, num_outputs: int) -> dict:
    """Constructor arguments for `cfg.model.name`: the `model.*` keys its constructor declares."""
    m = cfg.model
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
        stem_chunk=m.stem_chunk,
        channels_last=m.channels_last,
        checkpoint_stem=cfg.train.checkpoint_stem,
    )
    accepted = model_arguments(m.name)
    return {key: value for key, value in offered.items() if key in accepted}


def dropped_modality_indices(cfg: DictConfig) -> list[int]:
    """Positions in `data.modalities` of `data.drop_modalities`; at least one modality must remain."""
    modalities, dropped = list(cfg.data.modalities), list(cfg.data.drop_modalities)
    unknown = [name for name in dropped if name not in modalities]
    if unknown:
        raise ConfigError(f"invalid value for config key 'data.drop_modalities': {unknown} not in data.modalities {modalities}")
    if set(modalities) <= set(dropped):
        raise ConfigError(f"invalid value for config key 'data.drop_modalities': it drops every modality of {modalities}")
    return [modalities.index(name) for name in dropped]


def build_model(cfg: DictConfig, num_outputs: int, pretrained: bool | None = None) -> nn.Module:
    """The model a config describes; `pretrained=False` skips weight loading (a checkpoint follows).

    With `data.drop_modalities` the model sees those modalities as missing whenever it is in eval mode.
    """
    if cfg.model.name not in list_models():
        raise ConfigError(f"invalid value for config key 'model.name': {cfg.model.name!r}; registered models: {', '.join(list_models())}")
    kwargs = model_kwargs(cfg, num_outputs)
    if pretrained is False:
        kwargs["pretrained"] = False
    dropped = dropped_modality_indices(cfg)
    try:
        model = create_model(cfg.model.name, **kwargs)
    except UnknownBackbone as err:
        raise ConfigError(f"invalid value for config key 'model.backbone': {err}") from None
    if dropped:
        drop_modalities_at_inference(model, dropped)
    return model
