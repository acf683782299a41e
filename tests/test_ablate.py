import itertools
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import tiny_nifti_overrides, tiny_overrides
from omegaconf import DictConfig

from transmed.commands.ablate import main
from transmed.commands.cv import main as cv_main
from transmed.config import ConfigError, load_config
from transmed.data import generate_nifti, read_manifest
from transmed.experiments.ablation import expand_grid, load_ablation, run_ablation, run_configs
from transmed.experiments.studies.kinds import load_study
from transmed.experiments.studies.spec import study_configs
from transmed.experiments.sweep import write_sweep

ROOT = Path(__file__).resolve().parents[1]


def ablation_file(tmp_path: Path, grid, group: str = "mini") -> Path:
    path = tmp_path / f"{group}.yaml"
    path.write_text(yaml.safe_dump({"base": str(ROOT / "configs" / "demo.yaml"), "group": group, "grid": grid}))
    return path


def test_grid_keys_make_a_product_and_a_list_of_grids_concatenates():
    assert expand_grid({"a": [1, 2], "b": ["x", "y"]}) == [{"a": 1, "b": "x"}, {"a": 1, "b": "y"}, {"a": 2, "b": "x"}, {"a": 2, "b": "y"}]
    assert expand_grid([{"a": [1]}, {"b": [["s", "t"]]}, {"a": [1]}]) == [{"a": 1}, {"b": ["s", "t"]}]
    with pytest.raises(ConfigError, match="'a'"):
        expand_grid({"a": 1})


def test_shipped_ablation_files_resolve(monkeypatch):
    monkeypatch.chdir(ROOT)  # their base configs are relative to the repository root
    for path in sorted((ROOT / "configs" / "ablations").glob("*.yaml")):
        ablation = load_ablation(path)
        configs = run_configs(ablation)
        assert len({cfg.run_name for cfg in configs}) == len(ablation.runs) > 1, path


def sweep_points(sweep: dict) -> list[list[str]]:
    """The configs' overrides of every W&B grid point, rendered as the agent's ${args_no_hyphens} does (`key=str(value)`)."""
    params = sweep["parameters"]
    return [
        [f"{key}={value}" for key, value in zip(params, combo)]
        for combo in itertools.product(*(spec["values"] for spec in params.values()))
    ]


def command_config(sweep: dict, point: list[str]) -> DictConfig:
    """The config `train.py` builds for one point of the sweep's command."""
    command = sweep["command"]
    assert command[:4] == ["${env}", "${interpreter}", "${program}", "--config"] and command[-1] == "${args_no_hyphens}"
    return load_config(command[4], [*command[5:-1], *point])


def test_sweep_from_an_ablation_file_is_its_grid(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(ROOT)
    out = tmp_path / "sweep.yaml"
    main(["configs/ablations/backbone.yaml", "--sweep", str(out), "train.epochs=3"])
    assert "wandb sweep" in capsys.readouterr().out
    sweep = yaml.safe_load(out.read_text())
    assert sweep == write_sweep("configs/ablations/backbone.yaml", tmp_path / "again.yaml", ["train.epochs=3"])
    assert (sweep["program"], sweep["method"], sweep["metric"]) == ("train.py", "grid", {"name": "val/auc", "goal": "maximize"})
    backbones = ["resnet18", "resnet34", "resnet50", "efficientnet_b0", "convnext_tiny", "densenet121"]
    assert sweep["parameters"] == {"model.backbone": {"values": backbones}}
    assert sweep["command"] == [
        "${env}", "${interpreter}", "${program}", "--config", "configs/knee.yaml",
        "wandb.mode=online", "wandb.group=knee-backbone", "train.epochs=3", "${args_no_hyphens}",
    ]  # fmt: skip
    cfgs = [command_config(sweep, point) for point in sweep_points(sweep)]
    assert [cfg.model.backbone for cfg in cfgs] == backbones and {cfg.train.epochs for cfg in cfgs} == {3}


def test_sweep_of_a_union_of_grids_has_one_value_per_run(tmp_path):
    grid = [{"model.grid_size": [1, 2]}, {"model.slice_mode": ["replicate"], "model.slice_stride": [2, 3]}]
    sweep = write_sweep(ablation_file(tmp_path, grid), tmp_path / "sweep.yaml", base=str(ROOT / "configs" / "demo.yaml"))
    assert yaml.safe_load((tmp_path / "sweep.yaml").read_text()) == sweep
    values = [
        {"grid_size": 1},
        {"grid_size": 2},
        {"slice_mode": "replicate", "slice_stride": 2},
        {"slice_mode": "replicate", "slice_stride": 3},
    ]
    assert sweep["parameters"] == {"model": {"values": values}}
    base = load_config(ROOT / "configs" / "demo.yaml").model
    cfgs = [command_config(sweep, point).model for point in sweep_points(sweep)]  # a point leaves the other keys as the base has them
    expected = [(1, base.slice_mode, base.slice_stride), (2, base.slice_mode, base.slice_stride)]
    expected += [(base.grid_size, "replicate", 2), (base.grid_size, "replicate", 3)]
    assert [(m.grid_size, m.slice_mode, m.slice_stride) for m in cfgs] == expected


def test_sweep_from_a_study_file_has_each_run_and_seed(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    out = tmp_path / "depth.yaml"
    main(["configs/studies/depth.yaml", "--sweep", str(out)])
    sweep = yaml.safe_load(out.read_text())
    blocks = sweep["parameters"]["model"]["values"]
    assert blocks[0] == {"trainable_blocks": 0} and blocks[-2:] == [
        {"trainable_blocks": "all"},
        {"pretrained": False, "trainable_blocks": "all"},
    ]
    assert len(blocks) == len(load_study("configs/studies/depth.yaml").runs)  # `each` expanded as the study expands it
    assert sweep["parameters"]["seed"] == {"values": [42, 43, 44]}
    assert sweep["name"] == "study-depth" and sweep["command"][4:-1] == [
        "demo-transfer.yaml",
        "wandb.mode=online",
        "wandb.group=study-depth",
        "data.val_fraction=0.2",
    ]
    cfgs = [command_config(sweep, point) for point in sweep_points(sweep)]
    assert len(cfgs) == 3 * len(blocks) and {c.seed for c in cfgs} == {42, 43, 44}
    scratch = cfgs[-1]
    assert (scratch.model.pretrained, scratch.model.trainable_blocks, scratch.seed, scratch.data.val_fraction) == (False, "all", 44, 0.2)
    studied = [cfg for _, _, cfg in study_configs(load_study("configs/studies/depth.yaml"))]  # what `transmed study` trains
    assert [(c.model, c.data, c.train, c.seed) for c in cfgs] == [(c.model, c.data, c.train, c.seed) for c in studied]


@pytest.mark.parametrize(
    "text, match",
    [
        ("base: [\n", "cannot read"),
        ("- a list\n", "top level must be a mapping"),
        (f"base: {ROOT / 'configs' / 'demo.yaml'}\ngrid: {{model.nme: [1, 2]}}\n", "model.nme"),
        (f"base: {ROOT / 'configs' / 'demo.yaml'}\ngrid: [{{model.name: [mrnet]}}, {{data.modalities: [[coronal]]}}]\n", "W&B grid"),
    ],
)
def test_a_bad_file_is_one_line_and_writes_no_sweep(tmp_path, text, match):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=match) as err:
        write_sweep(path, tmp_path / "sweep.yaml")
    assert "\n" not in str(err.value) and not (tmp_path / "sweep.yaml").exists()


def test_ablate_help_imports_no_heavy_library():
    from test_startup import heavy_modules_after

    assert (
        heavy_modules_after("from transmed.commands import main\ntry:\n    main(['ablate', '--help'])\nexcept SystemExit:\n    pass") == []
    )


def test_a_typo_in_the_grid_fails_before_anything_trains(tmp_path, mrnet_root):
    path = ablation_file(tmp_path, {"model.nme": ["mrnet"]})
    with pytest.raises(ConfigError, match="model.nme"):
        run_ablation(path, tiny_overrides(mrnet_root, tmp_path / "runs"))
    assert not (tmp_path / "runs").exists()


def test_fusion_ablation_trains_and_evaluates_each_baseline_and_survives_a_failed_run(tmp_path, mrnet_root):
    grid = [{"model.name": ["mrnet", "late_fusion", "cnn3d"]}, {"data.modalities": [["coronal"]]}, {"model.trainable_blocks": [9]}]
    path = ablation_file(tmp_path, grid, group="mini-fusion")
    with pytest.raises(SystemExit) as exited:  # the failed run makes the exit status 1, after the comparison
        extra = {"train.epochs": "1", "model.slice_stride": "3", "data.val_fraction": "0.25"}  # MRNet valid becomes test
        main([str(path), "--bootstrap", "50", *tiny_overrides(mrnet_root, tmp_path, **extra)])
    assert exited.value.code == 1

    out = tmp_path / "mini-fusion"
    frame = pd.read_csv(out / "comparison.csv")
    assert list(frame["run"]) == ["name-mrnet", "name-late_fusion", "name-cnn3d", "modalities-coronal", "trainable_blocks-9"]
    assert {"model.name", "data.modalities", "model.trainable_blocks", "val/auc", "params/trainable", "sec/epoch"} <= set(frame.columns)
    ok = frame[frame["status"] == "ok"]
    assert len(ok) == 4
    assert ((ok["val/auc_ci_low"] <= ok["val/auc"]) & (ok["val/auc"] <= ok["val/auc_ci_high"])).all()
    assert ((ok["test/auc_ci_low"] <= ok["test/auc"]) & (ok["test/auc"] <= ok["test/auc_ci_high"])).all()
    assert (ok["sec/epoch"] > 0).all() and (ok["params/trainable"] > 0).all()
    single = frame[frame["run"] == "modalities-coronal"].iloc[0]
    assert single["model.name"] == "transmed" and single["data.modalities"] == "[coronal]"
    failed = frame[frame["status"] != "ok"].iloc[0]
    assert failed["run"] == "trainable_blocks-9" and "trainable_blocks" in failed["status"]

    assert "| name-mrnet | mrnet |" in (out / "comparison.md").read_text() and "test/auc [95% CI]" in (out / "comparison.md").read_text()
    assert (out / "comparison.png").stat().st_size > 0
    run_cfg = load_config(out / "name-cnn3d" / "config.yaml")
    assert run_cfg.wandb.group == "mini-fusion" and "model.name=cnn3d" in run_cfg.wandb.tags


def nifti_overrides(root: Path, out: Path, **extra: str) -> list[str]:
    return tiny_nifti_overrides(root, out, **{"data.num_folds": "2", "run_name": "cv", **extra})


def test_cv_trains_every_fold_as_one_group_and_summarises(tmp_path):
    root = generate_nifti(tmp_path / "parotid", num_studies=12, seed=3)
    overrides = nifti_overrides(root, tmp_path)
    cv_main(["--config", str(ROOT / "configs" / "parotid.yaml"), *overrides])

    summary = json.loads((tmp_path / "runs" / "cv" / "cv_summary.json").read_text())
    assert summary["num_folds"] == 2 and [fold["fold"] for fold in summary["folds"]] == [0, 1]
    assert summary["metric_epoch"] == "last"
    for fold in summary["folds"]:  # the last epoch's metrics: the validation fold chose nothing
        last = json.loads((Path(fold["run_dir"]) / "summary.json").read_text())["last"]
        assert fold["epoch"] == last["epoch"] and fold["val/auc"] == last["val/auc"]
    valid_ids = []
    for k, fold in enumerate(summary["folds"]):
        cfg = load_config(Path(fold["run_dir"]) / "config.yaml")
        assert Path(fold["run_dir"]) == tmp_path / "runs" / "cv" / f"fold{k}"
        assert cfg.data.fold == k and cfg.wandb.group == "cv"
        valid_ids.append({item["id"] for item in read_manifest(cfg, "valid")})
    assert not valid_ids[0] & valid_ids[1] and len(valid_ids[0] | valid_ids[1]) == 12
    aucs = [fold["val/auc"] for fold in summary["folds"]]
    assert summary["mean"]["val/auc"] == pytest.approx(np.mean(aucs))
    assert summary["std"]["val/auc"] == pytest.approx(np.std(aucs, ddof=1))
    assert {"val/loss", "val/auc/adenoma"} <= set(summary["mean"])


def test_cv_refuses_data_without_folds(tmp_path, mrnet_root):
    with pytest.raises(ConfigError, match="data.format='mrnet'"):
        cv_main(["--config", str(ROOT / "configs" / "demo.yaml"), *tiny_overrides(mrnet_root, tmp_path)])
    root = generate_nifti(tmp_path / "split", num_studies=5, with_split=True, seed=4)
    with pytest.raises(ConfigError, match="split column"):
        cv_main(["--config", str(ROOT / "configs" / "parotid.yaml"), *nifti_overrides(root, tmp_path)])


def test_rerun_with_resume_auto_names_every_run(tmp_path, mrnet_root):
    path = ablation_file(tmp_path, {"model.name": ["mrnet", "late_fusion"]}, group="again")
    overrides = [item for item in tiny_overrides(mrnet_root, tmp_path) if not item.startswith("run_name=")]
    configs = run_configs(load_ablation(path), [*overrides, "train.resume=auto"])  # no run_name: the ablation names each run
    assert [cfg.run_name for cfg in configs] == ["again/name-mrnet", "again/name-late_fusion"]


def test_long_tags_are_cut_to_what_wandb_takes():
    from transmed.engine.logger import MAX_TAG, wandb_tags

    long = "data.root=/very/long/path/to/a/dataset/" + "x" * 80
    tags = wandb_tags(["ablation", long])
    assert tags[0] == "ablation" and len(tags[1]) == MAX_TAG == 64 and tags[1].endswith("...") and long.startswith(tags[1][:-3])
