import re
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


@pytest.mark.parametrize("name, pretrained", [("knee.yaml", 1.0), ("parotid.yaml", 1.0)])  # knee, parotid: the stem at the full rate (issue 22)
def test_shipped_configs_train_a_from_scratch_stem_at_the_full_lr(name, pretrained):
    assert load_config(ROOT / "configs" / name).train.backbone_lr_mult == pytest.approx(pretrained)
    assert load_config(ROOT / "configs" / name, ["model.pretrained=false"]).train.backbone_lr_mult == pytest.approx(1.0)


# --- issue 12: every config value is range-checked; each bad one is one `error: config:` line naming the key ---


def run_command(argv, capsys) -> tuple[int, str]:
    """`transmed ARGV` in-process: (exit code, stderr)."""
    from transmed.commands import main

    with pytest.raises(SystemExit) as caught:
        main(argv)
    return caught.value.code, capsys.readouterr().err


BAD_VALUES = [
    ("train.accumulate=0", "train.accumulate"),  # was a ZeroDivisionError
    ("train.lr=-1", "train.lr"),  # trained: gradient ascent
    ("train.lr=0", "train.lr"),
    ("data.num_slices=0", "data.num_slices"),  # silently meant "keep them"
    ("data.num_slices=2", "data.num_slices.*at least 3"),
    ("model.dropout=1.5", "model.dropout"),  # was torch's ValueError
    ("data.num_workers=-1", "data.num_workers"),
    ("data.val_fraction=1.5", "data.val_fraction"),
    ("data.val_fraction=0", "data.val_fraction"),
    ("model.grid_size=0", "model.grid_size"),
    ("model.slice_window=5", "model.slice_window.*must be 3"),
    ("model.slice_stride=0", "model.slice_stride"),
    ("train.weight_decay=-1", "train.weight_decay"),
    ("train.warmup_epochs=-1", "train.warmup_epochs"),
    ("train.grad_clip=-1", "train.grad_clip"),
    ("train.modality_dropout=1", "train.modality_dropout"),
    ("train.backbone_lr_mult=-1", "train.backbone_lr_mult"),
    ("data.num_folds=1", "data.num_folds"),
    ("data.fold=-1", "data.fold"),
    ("data.spacing=[1,0,1]", "data.spacing"),
    ("data.spacing=[1,1]", "data.spacing"),
    ("data.slice_axis=3", "data.slice_axis"),
    ("model.depth=0", "model.depth"),
    ("model.drop_path=1.5", "model.drop_path"),
    ("model.stem_chunk=0", "model.stem_chunk"),
    ("seed=-1", "'seed'"),
    ("data.split_seed=-1", "data.split_seed"),
    ("run_name=a/../../b", "run_name"),
    ("data.modalities=[sagittal,sagittal]", "data.modalities.*twice"),
    ("data.modalities=[[1]]", r"data.modalities.*\[\[1\]\].*flat list of names"),
    ("data.tasks=[abnormal,[acl]]", r"data.tasks.*flat list of names"),
    ("data.tasks=[]", "data.tasks"),
    ("data.classes=[a]", "data.classes"),
    ("data.synthetic.max_slices=1", "data.synthetic.max_slices"),
    ("data.synthetic.num_train=0", "data.synthetic.num_train"),
]


@pytest.mark.parametrize("override,match", BAD_VALUES, ids=[o for o, _ in BAD_VALUES])
def test_out_of_range_value_is_one_config_line_naming_the_key(override, match, capsys, tmp_path):
    nowhere = ["data.format=mrnet", f"data.root={tmp_path / 'none'}", f"output_dir={tmp_path}"]  # before the checks: no data
    code, err = run_command(["train", "--config", "demo.yaml", override, *nowhere], capsys)
    assert code == 2 and "Traceback" not in err, err
    assert len(err.strip().splitlines()) == 1 and err.startswith("error: config: ") and "config key" in err, err
    assert re.search(match, err), err
    assert not any(tmp_path.iterdir())


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_cuda_is_a_config_error(capsys, tmp_path):
    code, err = run_command(["train", "--config", "demo.yaml", "train.device=cuda", f"output_dir={tmp_path}"], capsys)
    assert code == 2 and err.strip().splitlines() == [err.strip()] and "'train.device'" in err and "CUDA is not available" in err


@pytest.mark.parametrize("text", ["- data\n- model\n", "42\n"], ids=["list", "scalar"])
def test_yaml_whose_top_level_is_not_a_mapping(text, capsys, tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    code, err = run_command(["train", "--config", str(path)], capsys)
    expected = f"error: config: config file {path}: the top level must be a mapping of keys (data:, model:, train:, ...), not a list or a value"  # noqa: E501
    assert code == 2 and err.strip().splitlines() == [expected], err


def test_stem_stage_beyond_the_backbone_names_key_and_stages(capsys, tmp_path):
    from conftest import TINY_BACKBONE

    code, err = run_command(
        ["train", "--config", "demo.yaml", f"model.backbone={TINY_BACKBONE}", "model.stem_stage=9", f"output_dir={tmp_path}"], capsys
    )
    assert code == 2 and "Traceback" not in err and re.search(r"'model.stem_stage': 9; backbone 'test_resnet' has \d feature stages", err)
    assert not any(tmp_path.iterdir())


def test_bare_config_names_resolve_from_any_folder(monkeypatch, tmp_path):
    """The design's usage line `python train.py --config knee.yaml`, from the repository and from elsewhere."""
    for cwd in (ROOT, tmp_path):
        monkeypatch.chdir(cwd)
        for name in ("knee.yaml", "configs/knee.yaml", "demo.yaml"):
            assert load_config(name, ["model.pretrained=false"]).run_name.startswith(Path(name).stem + "-")
    with pytest.raises(ConfigError, match="config file not found: kneee.yaml"):
        load_config("kneee.yaml")


def test_usage_line_from_another_folder_fails_in_one_line_without_warnings_or_run_folder(tmp_path):
    """`python train.py --config knee.yaml` outside the repository on data that cannot train: the loaders are built (MONAI
    and pydicom print their nvImageCodec notes then), the loss refuses a task without positives, one `error:` line, no
    traceback, no warning, and no empty `runs/knee-<timestamp>/` left behind."""
    from transmed.data import generate_mrnet

    root = generate_mrnet(tmp_path / "knee", num_train=4, num_valid=2, image_size=32, min_slices=3, max_slices=4, seed=0)
    (root / "train-acl.csv").write_text("".join(f"{i:04d},0\n" for i in range(4)))
    overrides = [f"data.root={root}", "data.val_fraction=null", "model.pretrained=false", "model.backbone=test_resnet",
                 "data.image_size=32", "data.num_workers=0", "data.cache_dir=null", f"output_dir={tmp_path / 'runs'}",
                 "wandb.mode=disabled"]
    result = subprocess.run(
        [sys.executable, str(ROOT / "train.py"), "--config", "knee.yaml", *overrides],
        cwd=tmp_path, capture_output=True, text=True, timeout=300, check=False,
    )
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert result.returncode == 1 and errors == [errors[0]] and "task 'acl' has 0 positive and 4 negative" in errors[0], result.stderr
    for noise in ("Traceback", "Warning", "nvImageCodec", "NvImgCodec"):
        assert noise not in result.stderr, result.stderr
    assert not (tmp_path / "runs").exists()


WRONG_TYPES = [
    ("train.lr=abc", "'train.lr': 'abc'; expected a number"),
    ("train.epochs=1.5", "'train.epochs': 1.5; expected an integer"),
    ("data.augment=maybe", "'data.augment': 'maybe'; expected true or false"),
    ("data.num_slices=many", "'data.num_slices': 'many'; expected an integer or null"),
    ("data.modalities=T1", r"'data.modalities': 'T1'; expected a list of strings \(\[x, y\]\)"),
    ("data.spacing=[1,a,1]", r"'data.spacing\[1\]': 'a'; expected a number"),
]


@pytest.mark.parametrize("override,match", WRONG_TYPES, ids=[o for o, _ in WRONG_TYPES])
def test_wrong_type_is_one_line_naming_key_value_and_type(override, match, capsys):
    code, err = run_command(["train", "--config", "demo.yaml", override], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert re.fullmatch(rf"error: config: invalid value for config key {match} \(from override '{re.escape(override)}'\)\n", err), err


def test_a_value_for_a_section_names_the_section(capsys):
    code, err = run_command(["train", "--config", "demo.yaml", "data=3"], capsys)
    assert code == 2 and err == (
        "error: config: config key 'data' is a section, not a value (3): set its keys, such as data.format, data.root "
        "(from override 'data=3')\n"
    )


def test_wrong_type_in_a_yaml_file_names_the_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("train:\n  lr: fast\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert str(caught.value) == f"invalid value for config key 'train.lr': 'fast'; expected a number (from {path})"
