import pytest
import torch

from transmed import create_model, list_models
from transmed.engine.trainer import build_optimizer
from transmed.models.factory import model_kwargs

BASELINES = ["mrnet", "late_fusion", "cnn3d"]


def baseline(tiny_cfg, name: str, num_outputs: int = 3, **extra: str) -> torch.nn.Module:
    """A baseline built from exactly the keyword arguments the config factory gives it."""
    torch.manual_seed(0)
    return create_model(name, **model_kwargs(tiny_cfg(**{"model.name": name}, **extra), num_outputs)).eval()


def test_baselines_are_registered():
    assert {"mrnet", "late_fusion", "cnn3d", "cnn3d_densenet121"} <= set(list_models())


@pytest.mark.parametrize("name", BASELINES)
def test_baseline_honours_the_mask(name, tiny_cfg):
    model = baseline(tiny_cfg, name, num_outputs=4)
    x = torch.rand(2, 3, 7, 32, 32)
    mask = torch.ones(2, 3, 7, dtype=torch.bool)
    mask[0, 1, 4:] = False  # a shorter stack
    mask[1, 2] = False  # a missing modality
    with torch.no_grad():
        logits = model(x, mask)
        noisy = x.clone()
        noisy[~mask] = torch.randn_like(noisy[~mask]) * 1e3
        assert logits.shape == (2, 4) and torch.isfinite(logits).all()
        assert torch.equal(model(noisy, mask), logits)


def test_mrnet_takes_the_max_over_real_slices_only(tiny_cfg):
    model = baseline(tiny_cfg, "mrnet", **{"model.slice_mode": "replicate"})
    x = torch.rand(1, 3, 6, 32, 32)
    mask = torch.ones(1, 3, 6, dtype=torch.bool)
    mask[0, 0, 3:] = False
    with torch.no_grad():
        logits, present = model.plane_logits(x, mask)
        alone, _ = model.plane_logits(x[:, :, :3])
    torch.testing.assert_close(logits[0, 0], alone[0, 0], atol=1e-5, rtol=0)
    assert present.all()


def test_backbone_lr_mult_reaches_every_mrnet_stem(tiny_cfg):
    cfg = tiny_cfg(**{"train.backbone_lr_mult": "0.1", "train.lr": "1e-3"})
    model = baseline(tiny_cfg, "mrnet")
    optimizer = build_optimizer(model, cfg)
    lr_of = {id(p): group["lr"] for group in optimizer.param_groups for p in group["params"]}
    for name, param in model.named_parameters():
        assert lr_of[id(param)] == pytest.approx(1e-4 if name.startswith("stem.") else 1e-3), name


# Training and evaluating each baseline, and single-modality TransMed: tests/test_ablate.py (a small fusion ablation).
