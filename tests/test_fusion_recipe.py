"""The recipe keys of issue 22: mean pooling over real tokens (`model.pool`), the modalities' fusion (`model.fuse`),
the norm after pooling (`model.fc_norm`) and layer scale (`model.layer_scale`); best.pt's choice among tied epochs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import TINY_BACKBONE

from transmed import TransMed
from transmed.config import load_config
from transmed.core.errors import ConfigError
from transmed.engine.trainer import improves
from transmed.models.factory import model_kwargs


def tiny_model(**kw) -> TransMed:
    torch.manual_seed(0)
    return TransMed(num_modalities=2, num_outputs=3, backbone=TINY_BACKBONE, variant="tiny", depth=2, **kw).eval()


@pytest.mark.parametrize(
    "pool, fuse, fc_norm", [("mean", "linear", False), ("modality", "linear", False), ("modality", "mlp", False), ("mean", "linear", True), ("modality", "mlp", True)]
)
def test_pooling_reads_real_tokens_only(pool, fuse, fc_norm):
    model = tiny_model(pool=pool, fuse=fuse, fc_norm=fc_norm, layer_scale=1e-4)
    x = torch.rand(2, 2, 8, 32, 32)
    mask = torch.ones(2, 2, 8, dtype=torch.bool)
    mask[1, 1, 5:] = False
    mask[0, 0] = False  # a missing modality
    noisy = x.clone()
    noisy[~mask] = torch.randn_like(noisy[~mask]) * 1e3
    with torch.no_grad():
        ref = model(x, mask)
        assert torch.equal(model(noisy, mask), ref)
        longer = torch.cat([x, torch.rand(2, 2, 3, 32, 32)], dim=2), torch.cat([mask, torch.zeros(2, 2, 3, dtype=torch.bool)], dim=2)
        assert torch.allclose(model(*longer), ref, atol=1e-5)  # more padding, same studies
        model.export_mode = True
        assert torch.allclose(model(x, mask), ref, atol=1e-5)


def test_small_layer_scale_starts_every_block_near_the_identity():
    model = tiny_model(layer_scale=1e-6)
    tokens = torch.randn(2, 5, model.dim)
    with torch.no_grad():
        for block in model.encoder.blocks:
            assert torch.allclose(block(tokens)[0], tokens, atol=1e-4)
    assert all(p.dim() == 1 for name, p in model.named_parameters() if name.endswith("gamma"))  # no weight decay (1-D)


def test_pool_and_layer_scale_are_config_keys_with_checks(tiny_cfg):
    kwargs = model_kwargs(tiny_cfg(**{"model.pool": "mean", "model.layer_scale": "0.1"}), 3)
    assert kwargs["pool"] == "mean" and kwargs["layer_scale"] == 0.1
    with pytest.raises(ConfigError, match="model.pool"):
        load_config(None, ["model.pool=max"])
    with pytest.raises(ConfigError, match="model.layer_scale"):
        load_config(None, ["model.layer_scale=0"])


def test_the_mlp_fusion_is_late_fusions_head_and_needs_the_modality_pool(tiny_cfg):
    model = tiny_model(pool="modality", fuse="mlp")
    assert [type(m).__name__ for m in model.fuse] == ["LayerNorm", "Linear", "GELU"]
    assert model.fuse[1].in_features == 2 * model.dim and model.fuse[1].out_features == model.dim
    assert isinstance(tiny_model(pool="modality").fuse, torch.nn.Linear)  # the default: one linear map
    with pytest.raises(ValueError, match="'mlp' only with pool 'modality'"):
        tiny_model(pool="cls", fuse="mlp")
    with pytest.raises(ConfigError, match="model.fuse=mlp' needs model.pool=modality"):
        model_kwargs(tiny_cfg(**{"model.pool": "mean", "model.fuse": "mlp"}), 3)
    with pytest.raises(ConfigError, match="model.fuse"):
        load_config(None, ["model.fuse=attention"])
    for name in ("knee.yaml", "parotid.yaml"):  # the shipped recipes (issue 22)
        cfg = load_config(Path(__file__).resolve().parents[1] / "configs" / name)
        assert (cfg.model.pool, cfg.model.fuse, cfg.model.fc_norm) == ("modality", "mlp", True)


def test_fc_norm_normalises_each_modalitys_mean_not_each_token(tiny_cfg):
    model = tiny_model(pool="modality", fuse="mlp", fc_norm=True)
    assert isinstance(model.encoder.norm, torch.nn.Identity) and isinstance(model.fc_norm, torch.nn.LayerNorm)
    x = torch.rand(2, 2, 9, 32, 32)
    mask = torch.ones(2, 2, 9, dtype=torch.bool)
    mask[0, 1, 6:] = False
    mask[1, 0] = False  # a missing modality
    with torch.no_grad():
        tokens, key_mask = model.tokenize(x, mask)
        encoded = model.encoder(tokens, key_mask)[0][:, 1:].unflatten(1, (2, -1))  # (B, M, T, D), no per-token norm
        real = key_mask[:, 1:].unflatten(1, (2, -1))
        means = torch.stack([torch.stack([encoded[b, m][real[b, m]].mean(0) if real[b, m].any() else torch.zeros(model.dim)
                                          for m in range(2)]) for b in range(2)])
        normed = torch.where(real.any(-1, keepdim=True), model.fc_norm(means), torch.zeros_like(means))
        assert torch.equal(normed[1, 0], torch.zeros(model.dim))  # a missing modality stays zeros, as in late fusion
        assert torch.allclose(model.forward_features(x, mask)[:, 0], model.fuse(normed.flatten(1)), atol=1e-5)
    with pytest.raises(ValueError, match="fc_norm normalises pooled tokens: it needs pool 'mean' or 'modality'"):
        tiny_model(pool="cls", fc_norm=True)
    with pytest.raises(ConfigError, match="model.fc_norm=true' normalises pooled tokens and needs model.pool=mean or modality"):
        load_config(None, ["model.fc_norm=true"])
    assert model_kwargs(tiny_cfg(**{"model.pool": "mean", "model.fc_norm": "true"}), 3)["fc_norm"] is True
    assert isinstance(tiny_model().encoder.norm, torch.nn.LayerNorm) and tiny_model().fc_norm is None  # the default: the paper's


def test_best_epoch_is_the_highest_val_auc_and_ties_go_to_the_lower_val_loss():
    epoch = lambda auc, loss: {"val/auc": auc, "val/loss": loss}  # noqa: E731
    assert improves(epoch(0.9, 0.5), None)
    assert improves(epoch(0.9, 0.5), epoch(float("nan"), 0.1))
    assert improves(epoch(0.95, 0.9), epoch(0.9, 0.1))  # AUC first
    assert not improves(epoch(0.9, 0.1), epoch(0.95, 0.9))
    assert improves(epoch(1.0, 0.09), epoch(1.0, 0.14))  # saturated AUC: the better-fitted epoch
    assert not improves(epoch(1.0, 0.14), epoch(1.0, 0.14))  # a full tie keeps the earlier epoch
    assert not improves(epoch(1.0, float("nan")), epoch(1.0, 0.14))
