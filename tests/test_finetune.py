import pytest
import torch
from conftest import TINY_BACKBONE
from torch import nn

from transmed import TransMed
from transmed.config import ConfigError
from transmed.core.checkpoint import load_checkpoint, save_checkpoint
from transmed.engine import train
from transmed.models import build_model
from transmed.models.finetune import drop_modalities_at_random, freeze_stem, stem_stages, train_mode


def tiny_model(backbone: str = TINY_BACKBONE) -> TransMed:
    torch.manual_seed(0)
    return TransMed(num_modalities=3, num_outputs=3, backbone=backbone, depth=1)


def trainable(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def test_trainable_parameters_grow_strictly_with_trainable_blocks():
    counts = []
    for blocks in (0, 1, 2, 3, 4, "all"):  # test_resnet has 5 stages: act1 (input stem), layer1..layer4
        model = tiny_model()
        freeze_stem(model, blocks)
        counts.append(trainable(model))
    assert all(a < b for a, b in zip(counts, counts[1:])), counts
    model = tiny_model()
    freeze_stem(model, 0)
    assert not any(p.requires_grad for p in model.stem.parameters())
    assert all(p.requires_grad for name, p in model.named_parameters() if not name.startswith("stem."))
    with pytest.raises(ConfigError, match="model.trainable_blocks=6.*5 stages"):
        freeze_stem(tiny_model(), 6)


@pytest.mark.parametrize("backbone", [TINY_BACKBONE, "test_convnext", "test_efficientnet"])
def test_stages_partition_the_stem_in_forward_order(backbone):
    stem = tiny_model(backbone).stem
    stages = stem_stages(stem)
    owned = [[id(p) for m in stage for p in m.parameters(recurse=False)] for stage in stages]
    flat = [i for stage in owned for i in stage]
    assert len(flat) == len(set(flat)) == len(list(stem.parameters()))
    assert all(owned), "every stage holds parameters"
    first_conv = next(m for m in stem.body.modules() if isinstance(m, nn.Conv2d))
    assert any(m is first_conv for m in stages[0])


def test_frozen_batchnorm_keeps_eval_mode_under_train():
    model = tiny_model()
    freeze_stem(model, 1)
    train_mode(model)
    stages = stem_stages(model.stem)
    norms = lambda ms: [m for m in ms if isinstance(m, nn.BatchNorm2d)]  # noqa: E731
    assert model.training and model.encoder.training
    assert all(not bn.training for stage in stages[:-1] for bn in norms(stage))
    assert all(bn.training for bn in norms(stages[-1]))


def test_init_from_reports_skips_and_frozen_stem_is_bit_identical_after_training(tiny_cfg, tmp_path, capsys):
    torch.manual_seed(1)
    before = build_model(tiny_cfg(), 3).state_dict()  # another run's weights: 3 modalities, 3 outputs
    save_checkpoint(tmp_path / "source.pt", model=before)
    cfg = tiny_cfg(
        **{
            "train.epochs": "1",
            "model.init_from": str(tmp_path / "source.pt"),
            "model.trainable_blocks": "2",
            "data.modalities": "[sagittal,coronal]",  # another modality count and ...
            "data.tasks": "[abnormal,acl]",  # ... another head size
        }
    )
    target = train(cfg)
    out = capsys.readouterr().out
    assert "skipped embed.modality: shape (3, 192) in the checkpoint, (2, 192) here" in out
    assert "skipped head.weight" in out and "skipped head.bias" in out

    after = load_checkpoint(target / "checkpoints" / "last.pt")["model"]
    model = build_model(cfg, 2)
    stages = stem_stages(model.stem)

    def state_keys(stages):
        """State-dict keys of the stages' modules' own parameters and buffers."""
        own = {id(m) for stage in stages for m in stage}
        return [f"{name}.{k}" for name, m in model.named_modules() if id(m) in own for k in m.state_dict() if "." not in k]

    frozen, trained = state_keys(stages[:-2]), state_keys(stages[-2:])
    assert frozen and trained
    for key in frozen:  # weights and BatchNorm statistics
        assert torch.equal(before[key], after[key]), key
    assert not all(torch.equal(before[key], after[key]) for key in trained)
    assert not torch.equal(before["encoder.blocks.0.attn.qkv.weight"], after["encoder.blocks.0.attn.qkv.weight"])


def test_modality_dropout_drops_whole_modalities_and_keeps_one():
    torch.manual_seed(0)
    mask = torch.ones(400, 3, 6, dtype=torch.bool)
    mask[:, 2, 4:] = False  # a shorter stack
    mask[::4, 1] = False  # studies without the second modality
    assert torch.equal(drop_modalities_at_random(mask, 0.0), mask)
    for p in (0.5, 1.0):
        out = drop_modalities_at_random(mask, p)
        kept = out.any(dim=-1)
        assert kept.any(dim=-1).all(), "every study keeps a modality"
        assert ((out == mask).all(dim=-1) | ~kept).all(), "a modality is kept whole or dropped whole"
        if p == 1.0:
            assert (kept.sum(dim=-1) == 1).all()
        else:
            dropped = (mask.any(-1) & ~kept).float().sum() / mask.any(-1).sum()
            assert 0.3 < dropped < 0.55


def test_build_model_freezes_as_the_config_says(tiny_cfg):
    """`build_model(cfg)` is the whole model: with trainable_blocks=1 only the stem's last stage trains."""
    model = build_model(tiny_cfg(**{"model.trainable_blocks": "1"}), 3)
    stages = stem_stages(model.stem)
    own = lambda modules: [p for m in modules for p in m.parameters(recurse=False)]  # noqa: E731
    assert own(stages[-1]) and all(p.requires_grad for p in own(stages[-1]))
    assert all(not p.requires_grad for stage in stages[:-1] for p in own(stage))
    assert all(p.requires_grad for p in model.encoder.parameters())
    assert trainable(model) < trainable(build_model(tiny_cfg(), 3))


def test_drop_modalities_at_inference_masks_them_out(tiny_cfg):
    torch.manual_seed(0)
    model = build_model(tiny_cfg(**{"data.drop_modalities": "[coronal]"}), 3).eval()
    assert model.drop_modalities == (1,)  # a constructor argument, applied to the mask in forward
    x = torch.rand(2, 3, 5, 32, 32)
    without = torch.ones(2, 3, 5, dtype=torch.bool)
    without[:, 1] = False
    with torch.no_grad():
        assert torch.equal(model(x), model(x, without))
        assert torch.equal(model(x, mask=torch.ones_like(without)), model(x, without))
    with pytest.raises(ConfigError, match="data.drop_modalities"):
        build_model(tiny_cfg(**{"data.drop_modalities": "[sagittal,coronal,axial]"}), 3)
    with pytest.raises(ConfigError, match="data.drop_modalities"):
        build_model(tiny_cfg(**{"data.drop_modalities": "[T2]"}), 3)
