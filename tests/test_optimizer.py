"""Parameter groups of `build_optimizer`: what gets weight decay, and the stem's learning rate."""

from __future__ import annotations

import pytest
import torch

from transmed import create_model
from transmed.engine.trainer import build_optimizer
from transmed.models.factory import model_kwargs

LR, MULT, WD = 1e-3, 0.1, 0.05
# parameters that are neither biases nor norms (ndim > 1) yet get no weight decay: the class token and the embedding tables
NO_DECAY_MATRICES = {"transmed": {"cls_token", "embed.modality", "embed.grid"}, "mrnet": set(), "late_fusion": set(), "cnn3d": set()}
HAS_STEM = {"transmed": True, "mrnet": True, "late_fusion": True, "cnn3d": False}  # cnn3d: a 3D network from scratch, no 2D stem


def _groups(tiny_cfg, name: str, **extra: str) -> tuple[torch.nn.Module, dict[str, tuple[float, float]]]:
    """The model and, per named trainable parameter, its optimizer group's (weight_decay, lr)."""
    cfg = tiny_cfg(**{"model.name": name, "train.lr": str(LR), "train.backbone_lr_mult": str(MULT), "train.weight_decay": str(WD)}, **extra)
    torch.manual_seed(0)
    model = create_model(name, **model_kwargs(cfg, 3))
    if "model.trainable_blocks" in extra:
        from transmed.models.finetune import prepare_model

        prepare_model(model, cfg)
    optimizer = build_optimizer(model, cfg)
    of = {}
    for group in optimizer.param_groups:
        for p in group["params"]:
            assert id(p) not in of, "a parameter is in two groups"
            of[id(p)] = (group["weight_decay"], group["lr"])
    named = {n: of.pop(id(p)) for n, p in model.named_parameters() if p.requires_grad}
    assert not of, "the optimizer holds parameters the model does not train"
    return model, named


@pytest.mark.parametrize("name", ["transmed", "mrnet", "late_fusion", "cnn3d"])
def test_weight_decay_by_what_a_parameter_is(tiny_cfg, name):
    model, groups = _groups(tiny_cfg, name)
    params = dict(model.named_parameters())
    for pname, (wd, lr) in groups.items():
        no_decay = params[pname].ndim <= 1 or pname in NO_DECAY_MATRICES[name]  # biases, norms, tokens, embedding tables
        assert wd == (0.0 if no_decay else WD), pname
        stem = HAS_STEM[name] and pname.startswith("stem.")
        assert lr == pytest.approx(LR * MULT if stem else LR), pname
    assert any(lr == pytest.approx(LR * MULT) for _, lr in groups.values()) == HAS_STEM[name]
    assert {wd for wd, _ in groups.values()} == {0.0, WD}


def test_fusion_linear_layers_get_weight_decay(tiny_cfg):
    """`tokenizer.proj` and `embed.slice_proj` were left without decay by a name-substring rule."""
    model, groups = _groups(tiny_cfg, "transmed")
    for pname in ("tokenizer.proj.weight", "embed.slice_proj.weight", "head.weight", "encoder.blocks.0.attn.qkv.weight"):
        assert groups[pname] == (WD, pytest.approx(LR)), pname
    for pname in ("cls_token", "embed.modality", "embed.grid", "tokenizer.proj.bias", "tokenizer.norm.weight", "encoder.norm.weight"):
        assert groups[pname][0] == 0.0, pname
    conv = next(n for n, p in model.named_parameters() if n.startswith("stem.") and p.ndim == 4)
    assert groups[conv] == (WD, pytest.approx(LR * MULT))
    assert model.no_weight_decay() <= dict(model.named_parameters()).keys()


def test_frozen_parameters_stay_out_of_the_optimizer(tiny_cfg):
    _, groups = _groups(tiny_cfg, "transmed", **{"model.trainable_blocks": "0"})
    assert not any(n.startswith("stem.") for n in groups)
    assert "tokenizer.proj.weight" in groups
