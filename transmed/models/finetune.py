"""Transfer learning: how deeply the timm stem trains, starting from another run; modality dropout in training.

A stem's *stages* are timm's feature stages (`body.feature_info`, e.g. resnet: act1, layer1..layer4).
Modules before the first stage's module (conv1, bn1) belong to stage 0, the input stem; modules
between two stage modules (resnet's maxpool, densenet's transitions) belong to the later stage.
`model.trainable_blocks=k` trains the last k stages and freezes the rest; frozen stages keep their
BatchNorm running statistics (`train_mode` keeps those layers in eval mode).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import chain
from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F
from einops import rearrange
from omegaconf import DictConfig
from torch import nn

from ..core.checkpoint import load_checkpoint
from ..core.errors import ConfigError
from .stem import CNNStem


def _stage_module(body: nn.Module, name: str) -> Optional[nn.Module]:
    """The module timm names `name`; FeatureListNet flattens 'stages.0' to the child 'stages_0'."""
    for candidate in (name, name.replace(".", "_")):
        try:
            return body.get_submodule(candidate)
        except AttributeError:
            continue
    return None


def stem_stages(stem: CNNStem) -> list[list[nn.Module]]:
    """The modules of each stage of the stem's timm body, input stem first.

    Only stages the body holds count (a body cut at `model.stem_stage` has fewer).
    """
    body = stem.body
    anchors = [m for m in (_stage_module(body, info["module"]) for info in body.feature_info.info) if m is not None]
    stage_of = {id(sub): i for i, anchor in enumerate(anchors) for sub in anchor.modules()}
    stages: list[list[nn.Module]] = [[] for _ in anchors]
    pending: list[nn.Module] = []
    for module in body.modules():  # pre-order, i.e. forward order for timm CNNs
        if id(module) in stage_of:
            stages[stage_of[id(module)]].extend(pending)
            stages[stage_of[id(module)]].append(module)
            pending = []
        else:
            pending.append(module)
    stages[-1].extend(pending)
    return stages


def freeze_stem(model: nn.Module, trainable_blocks: int | str) -> None:
    """Freezes all but the last `trainable_blocks` stages of every CNN stem of `model` ("all": none)."""
    if str(trainable_blocks) == "all":
        return
    k = int(trainable_blocks)
    stems = [m for m in model.modules() if isinstance(m, CNNStem)]
    if not stems:
        raise ConfigError(f"model.trainable_blocks={k}: {type(model).__name__} has no timm CNN stem to freeze; use 'all'")
    for stem in stems:
        stages = stem_stages(stem)
        if k > len(stages):
            raise ConfigError(
                f"model.trainable_blocks={k}: backbone '{stem.backbone_name}' has {len(stages)} stages here; use 0..{len(stages)} or 'all'"
            )
        for module in chain.from_iterable(stages[: len(stages) - k]):
            for param in module.parameters(recurse=False):
                param.requires_grad_(False)


def train_mode(model: nn.Module) -> nn.Module:
    """`model.train()`, except layers with running statistics (BatchNorm) whose parameters are all frozen."""
    model.train()
    for module in model.modules():
        if getattr(module, "running_mean", None) is not None:
            params = list(module.parameters(recurse=False))
            if params and not any(p.requires_grad for p in params):
                module.eval()
    return model


@dataclass
class InitReport:
    """What `load_matching` took from a checkpoint and what it left at the fresh initialisation."""

    checkpoint: str
    loaded: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)  # checkpoint key -> why it was not loaded
    missing: list[str] = field(default_factory=list)  # model keys the checkpoint lacks

    def __str__(self) -> str:
        counts = f"loaded {len(self.loaded)} tensors, skipped {len(self.skipped)}, {len(self.missing)} not in the checkpoint"
        lines = [f"init_from {self.checkpoint}: {counts}"]
        lines += [f"  skipped {key}: {why}" for key, why in self.skipped.items()]
        lines += [f"  not in the checkpoint: {key}" for key in self.missing]
        return "\n".join(lines)


def load_matching(model: nn.Module, checkpoint: str | Path) -> InitReport:
    """Loads every tensor of a TransMed checkpoint whose name and shape match `model` (safe load)."""
    state = load_checkpoint(checkpoint)["model"]
    own = model.state_dict()
    report = InitReport(str(checkpoint), missing=[key for key in own if key not in state])
    matching = {}
    for key, value in state.items():
        if key not in own:
            report.skipped[key] = "not in this model"
        elif own[key].shape != value.shape:
            report.skipped[key] = f"shape {tuple(value.shape)} in the checkpoint, {tuple(own[key].shape)} here"
        else:
            matching[key] = value
    model.load_state_dict(matching, strict=False)
    report.loaded = list(matching)
    return report


def prepare_model(model: nn.Module, cfg: DictConfig, init: bool = True) -> None:
    """Applies `model.init_from` (prints what was skipped; not with `init=False`), then `model.trainable_blocks`.

    Part of `factory.build_model`, which every model built from a config goes through.
    """
    if init and cfg.model.init_from:
        print(load_matching(model, cfg.model.init_from))
    freeze_stem(model, cfg.model.trainable_blocks)


def drop_modalities_at_random(mask: torch.Tensor, p: float) -> torch.Tensor:
    """Masks out whole modalities of each study with probability `p`, keeping at least one present one.

    mask: (B, M, S) -> (B, M, S).
    """
    present = mask.any(dim=-1)
    drop = (torch.rand(present.shape, device=mask.device) < p) & present
    none_left = ~(present & ~drop).any(dim=-1, keepdim=True)
    rescued = F.one_hot((torch.rand(present.shape, device=mask.device) * present).argmax(dim=-1), present.shape[1]).bool()
    drop &= ~(rescued & none_left)
    return mask & ~rearrange(drop, "b m -> b m 1")
