import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import tiny_nifti_overrides, tiny_overrides

from transmed.commands.ablate import main
from transmed.commands.cv import main as cv_main
from transmed.config import ConfigError, load_config
from transmed.data import generate_nifti, read_manifest
from transmed.experiments.ablation import expand_grid, load_ablation, run_ablation, run_configs

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


def test_shipped_ablation_and_sweep_files_resolve(monkeypatch):
    monkeypatch.chdir(ROOT)  # their base configs are relative to the repository root
    for path in sorted((ROOT / "configs" / "ablations").glob("*.yaml")):
        ablation = load_ablation(path)
        configs = run_configs(ablation)
        assert len({cfg.run_name for cfg in configs}) == len(ablation.runs) > 1, path
    for path in sorted((ROOT / "configs" / "sweeps").glob("*.yaml")):
        sweep = yaml.safe_load(path.read_text())
        values = [f"{key}={spec['values'][0]}" for key, spec in sweep["parameters"].items()]  # W&B's ${args_no_hyphens}
        load_config(ROOT / "configs" / "knee.yaml", values)


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
