import subprocess
import sys
from pathlib import Path

import pytest

from transmed.config import ConfigError, load_config, to_dict

ROOT = Path(__file__).resolve().parents[1]


def test_yaml_and_dotted_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("data:\n  image_size: 64\nmodel:\n  backbone: resnet34\n")
    cfg = load_config(path, ["train.epochs=3", "model.pretrained=/w/r34.pth", "data.num_slices=null"])
    assert cfg.data.image_size == 64 and cfg.model.backbone == "resnet34"
    assert cfg.train.epochs == 3 and cfg.model.pretrained == "/w/r34.pth" and cfg.data.num_slices is None
    assert cfg.run_name.startswith("c-")


@pytest.mark.parametrize(
    "override,match",
    [
        ("train.epoch=3", "unknown config key 'train.epoch'.*Did you mean 'train.epochs'"),
        ("modle.backbone=x", "unknown config key 'modle'"),
        ("train.epochs=many", "train.epochs"),
        ("data.format=dicomish", "data.format"),
        ("wandb.mode=sometimes", "wandb.mode"),
        ("model.trainable_blocks=deep", "model.trainable_blocks"),
        ("train.batch_size=0", "train.batch_size"),
        ("train.device=gpu", "train.device.*cuda:N"),
    ],
)
def test_bad_keys_and_values_name_the_key(override, match):
    with pytest.raises(ConfigError, match=match):
        load_config(None, [override])


def test_unknown_key_in_yaml_names_key_and_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("train:\n  lr: 0.1\n  warmup: 2\n")
    with pytest.raises(ConfigError, match=r"'train.warmup'.*bad.yaml"):
        load_config(path)


@pytest.mark.parametrize("config", ["configs/demo.yaml", "configs/knee.yaml", "configs/parotid.yaml"])
def test_shipped_configs_load(config):
    cfg = load_config(ROOT / config)
    for key in ("seed", "output_dir", "run_name"):
        assert cfg[key] is not None
    assert cfg.data.modalities and cfg.wandb.mode in ("offline", "online", "disabled")


def test_cli_exits_2_naming_the_key():
    result = subprocess.run(
        [sys.executable, "train.py", "--config", "configs/demo.yaml", "train.epocs=1"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert "train.epocs" in result.stderr and "train.epochs" in result.stderr


def test_resume_auto_needs_the_run_name(tmp_path):
    """A generated `{config}-{timestamp}` name never holds a checkpoint: resume=auto must name the run."""
    (tmp_path / "demo-20260101-000000").mkdir()
    with pytest.raises(ConfigError, match=r"train.resume=auto.*run_name=NAME.*latest is run_name=demo-20260101-000000"):
        load_config(ROOT / "configs/demo.yaml", ["train.resume=auto", f"output_dir={tmp_path}"])
    cfg = load_config(ROOT / "configs/demo.yaml", ["train.resume=auto", "run_name=demo-20260101-000000"])
    assert cfg.run_name == "demo-20260101-000000"


def test_unknown_model_or_backbone_is_a_config_error_before_any_data_is_read(tmp_path):
    from transmed.engine import train

    cfg = load_config(None, ["model.name=transmed_huge", f"output_dir={tmp_path}", "data.root=/nonexistent"])
    with pytest.raises(ConfigError, match=r"'model.name': 'transmed_huge'; registered models: .*transmed_tiny"):
        train(cfg)
    cfg = load_config(None, ["model.backbone=resnet181", f"output_dir={tmp_path}", "data.root=/nonexistent"])
    with pytest.raises(ConfigError, match=r"'model.backbone': unknown timm backbone 'resnet181'; close matches: .*resnet18"):
        train(cfg)
    assert not any(tmp_path.iterdir()), "a run that fails at startup leaves no run folder behind"


def test_checkpoint_config_with_keys_this_version_dropped_still_loads():
    saved = to_dict(load_config(None, ["train.epochs=3"]))
    saved["train"]["log_every"] = 10  # a key an earlier version had
    saved["retired"] = {"a": 1}
    with pytest.warns(UserWarning, match=r"ignored: train.log_every, retired|ignored: retired, train.log_every"):
        cfg = load_config(base=saved, overrides=["train.lr=0.5"])
    assert cfg.train.epochs == 3 and cfg.train.lr == 0.5 and "log_every" not in cfg.train
    with pytest.raises(ConfigError, match="train.log_every"):
        load_config(None, ["train.log_every=10"])  # only a saved config is lenient; a user's key is checked


@pytest.mark.parametrize(
    "overrides,expected",
    [
        (["model.pretrained=true"], 0.1),  # an ImageNet stem trains gently
        (["model.pretrained=/w/resnet18.pth"], 0.1),  # a local weights file is a pretrained stem too
        (["model.pretrained=false"], 1.0),  # from scratch the stem trains at the full lr
        (["model.pretrained=false", "model.init_from=runs/a/checkpoints/best.pt"], 0.1),  # a trained checkpoint's stem
        (["model.pretrained=false", "train.backbone_lr_mult=0.3"], 0.3),  # an explicit value wins
        (["model.pretrained=true", "train.backbone_lr_mult=1"], 1.0),
    ],
)
def test_backbone_lr_mult_follows_a_pretrained_start(overrides, expected, tmp_path):
    cfg = load_config(None, overrides)
    assert cfg.train.backbone_lr_mult == pytest.approx(expected)
    assert to_dict(cfg)["train"]["backbone_lr_mult"] == pytest.approx(expected)  # what the run's config.yaml holds
    saved = load_config(base=to_dict(cfg), overrides=["train.lr=0.5"])
    assert saved.train.backbone_lr_mult == pytest.approx(expected)


@pytest.mark.parametrize("name", ["knee.yaml", "parotid.yaml"])
def test_shipped_configs_train_a_from_scratch_stem_at_the_full_lr(name):
    assert load_config(ROOT / "configs" / name).train.backbone_lr_mult == pytest.approx(0.1)
    assert load_config(ROOT / "configs" / name, ["model.pretrained=false"]).train.backbone_lr_mult == pytest.approx(1.0)
