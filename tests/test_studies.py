"""Seed studies (`transmed study`): study files parse and expand, verdicts follow the intervals, and
tiny end-to-end studies write report.md with the measured table and the claim-vs-measured verdicts."""

import json
import math
from pathlib import Path

import pandas as pd
import pytest
import yaml
from conftest import tiny_overrides

from transmed.commands.study import main
from transmed.config import ConfigError, find_config
from transmed.data.synthesis import generate_mrnet
from transmed.experiments.studies import (
    FAILS,
    HOLDS,
    KINDS,
    NOT_MEASURED,
    Comparison,
    Interval,
    Results,
    analyse_fusion,
    load_study,
    mean_interval,
    run_study,
    study_configs,
    wilson_interval,
)

ROOT = Path(__file__).resolve().parents[1]
DEMO = str(ROOT / "configs" / "demo.yaml")
STUDIES = sorted((ROOT / "configs" / "studies").glob("*.yaml"))


def study_file(tmp_path: Path, kind: str, runs: list, **extra) -> Path:
    path = tmp_path / f"{kind}.yaml"
    spec = {"study": kind, "title": f"tiny {kind}", "paper": "A. Author (2020)", "claim": "it holds", "base": DEMO, "group": f"tiny-{kind}"}
    path.write_text(yaml.safe_dump({**spec, **extra, "runs": runs}))
    return path


@pytest.fixture(scope="module")
def small_root(tmp_path_factory) -> Path:
    """Smaller than conftest's mrnet_root: the studies train several runs each."""
    return generate_mrnet(tmp_path_factory.mktemp("small"), num_train=16, num_valid=10, image_size=32, min_slices=4, max_slices=5, seed=3)


def tiny(root: Path, out: Path, **extra: str) -> list[str]:
    return tiny_overrides(root, out, **{"train.epochs": "1", "model.slice_stride": "3", **extra})


# ---- study files ------------------------------------------------------------------------------


def test_there_are_the_five_shipped_studies():
    assert [p.stem for p in STUDIES] == ["depth", "fusion", "modes", "stepwise", "uap"]


@pytest.mark.parametrize("path", STUDIES, ids=lambda p: p.stem)
def test_shipped_study_files_parse_and_expand(path, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # bare base names are found in the repository's configs/ from anywhere
    bases = [DEMO]
    spec = yaml.safe_load(path.read_text())
    try:
        bases.append(str(find_config(spec["base"])))  # the file's own base (demo-transfer.yaml)
    except ConfigError:
        pass
    for base in bases:
        study = load_study(path, base=base)
        configs = study_configs(study)
        assert len({cfg.run_name for cfg in configs}) == len(study.runs) >= 2
        assert all(cfg.wandb.group == study.group == spec["group"] for cfg in configs)
        assert {run.role for run in study.runs} >= set(KINDS[study.kind].required)
        assert study.paper and study.claim
        quick = load_study(path, base=base, quick=True)
        assert quick.group == f"{spec['group']}-quick" and set(spec["quick"]["overrides"]) <= set(quick.overrides)
        names = [run.name for run in study.runs]
        if study.kind == "depth":  # every stage count of the base's backbone, then all, then from scratch
            stages = len([n for n in names if n.startswith("blocks-")]) - 1
            assert names == [*(f"blocks-{k}" for k in range(stages)), "blocks-all", "scratch"] and stages >= 4
            assert configs[-1].model.pretrained is False
        if study.kind == "fusion":
            modalities = list(configs[0].data.modalities)
            assert names == ["transmed", "late_fusion", "mrnet", "cnn3d", *(f"single-{m}" for m in modalities)]
            assert [list(cfg.data.modalities) for cfg in configs[-len(modalities) :]] == [[m] for m in modalities]
        if study.kind == "stepwise":
            intermediate, stepwise, _ = configs
            assert stepwise.model.init_from == str(Path(intermediate.output_dir) / intermediate.run_name / "checkpoints" / "best.pt")
            assert intermediate.data.root != stepwise.data.root and list(intermediate.data.tasks) == ["abnormal"]
            assert "model.init_from=run:intermediate" in stepwise.wandb.tags  # not the path: W&B tags are at most 64 characters
        if study.kind == "uap":
            assert study.settings["natural_images"] == "sample" and quick.settings["max_iter"] < study.settings["max_iter"]


def test_run_scoped_overrides_apply_to_that_run_after_its_set():
    path = ROOT / "configs" / "studies" / "stepwise.yaml"
    study = load_study(path, ["train.epochs=2", "intermediate:data.root=/elsewhere", "direct:train.lr=0.5"], base=DEMO)
    intermediate, stepwise, direct = study_configs(study)
    assert intermediate.data.root == "/elsewhere" and stepwise.data.root == direct.data.root != "/elsewhere"
    assert direct.train.lr == 0.5 and stepwise.train.lr != 0.5
    assert {cfg.train.epochs for cfg in (intermediate, stepwise, direct)} == {2}
    resumed = study_configs(load_study(path, ["train.resume=auto"], base=DEMO))  # finishing a study names no run
    assert [cfg.run_name for cfg in resumed] == [f"study-stepwise/{name}" for name in ("intermediate", "stepwise", "direct")]
    with pytest.raises(ConfigError, match="'nobody' is no run name or role"):
        load_study(path, ["nobody:train.lr=1"], base=DEMO)


@pytest.mark.parametrize(
    "spec, message",
    [
        ({"study": "depthh"}, "'study' must be one of"),
        ({"runs": [{"name": "a", "role": "teacher", "set": {}}]}, "role must be one of"),
        ({"runs": [{"name": "a", "role": "scratch", "set": {}}]}, r"needs runs with the role\(s\) \['imagenet'\]"),
        ({"runs": [{"name": "a", "role": "imagenet", "set": {"model.init_from": "run:b"}}]}, "no earlier run is named 'b'"),
        ({"runs": [{"name": "a", "role": "imagenet", "set": {"train.lr": "each"}}]}, "'train.lr: each' is not known"),
        ({"runs": [{"name": "a", "role": "imagenet", "set": {"model.nme": 1}}]}, "model.nme"),
        ({"colour": "red"}, r"unknown key\(s\) \['colour'\]"),
        ({"settings": {"zeta": 0.1}}, r"unknown setting\(s\) \['zeta'\]"),
    ],
)
def test_a_bad_study_file_fails_before_anything_trains(tmp_path, spec, message):
    runs = spec.pop("runs", [{"name": "a", "role": "imagenet", "set": {}}])
    path = study_file(tmp_path, spec.pop("study", "depth"), runs, **spec)
    with pytest.raises(ConfigError, match=message):
        study_configs(load_study(path, [f"output_dir={tmp_path / 'runs'}"]))
    assert not (tmp_path / "runs").exists()


# ---- intervals and verdicts -------------------------------------------------------------------


def test_wilson_interval_and_mean_interval():
    assert wilson_interval(0, 10).low == 0 and wilson_interval(0, 10).high == pytest.approx(0.2775, abs=1e-4)
    half = wilson_interval(5, 10)
    assert (half.value, round(half.low, 4), round(half.high, 4)) == (0.5, 0.2366, 0.7634)
    assert wilson_interval(10, 10).high == 1.0 and not wilson_interval(0, 0).measured
    times = mean_interval([10.0, 12.0, 11.0])
    assert times.value == 11.0 and times.low == pytest.approx(11 - 4.303 / math.sqrt(3), abs=1e-3)
    assert mean_interval([3.0]).measured and not mean_interval([3.0]).has_interval


def test_a_verdict_states_a_direction_only_when_the_intervals_are_apart():
    def verdict(a, b, expect="higher", unit="auc"):
        return Comparison("c", "a", "b", Interval(*a), Interval(*b), expect, unit)

    assert verdict((0.9, 0.85, 0.95), (0.7, 0.6, 0.8)).verdict == HOLDS
    assert verdict((0.9, 0.85, 0.95), (0.7, 0.6, 0.8), expect="lower").verdict == FAILS
    assert verdict((0.9, 0.75, 0.95), (0.7, 0.6, 0.8)).verdict == "inconclusive (intervals overlap)"
    assert verdict((0.9, math.nan, math.nan), (0.7, 0.6, 0.8)).verdict == "inconclusive (no interval)"
    assert verdict((math.nan,) * 3, (0.7, 0.6, 0.8)).verdict == NOT_MEASURED
    assert verdict((0.9, 0.85, 0.95), (0.7, 0.6, 0.8)).difference() == "+0.200 AUC"
    assert verdict((5.0, 4.0, 6.0), (10.0, 9.0, 11.0), "lower", "seconds").difference() == "0.50x the time (-50%)"
    assert verdict((0.4, 0.3, 0.5), (0.1, 0.05, 0.2), unit="rate").difference() == "+30.0 points, 4.0x"


def test_fusion_analysis_compares_transmed_with_each_baseline_and_the_best_single_modality(tmp_path):
    path = ROOT / "configs" / "studies" / "fusion.yaml"
    study = load_study(path, [f"output_dir={tmp_path}"], base=DEMO)
    aucs = {
        "transmed": 0.95,
        "late_fusion": 0.7,
        "mrnet": 0.93,
        "cnn3d": None,
        "single-sagittal": 0.6,
        "single-coronal": 0.8,
        "single-axial": 0.5,
    }
    rows = []
    for run in study.runs:
        auc = aucs[run.name]
        row = {"run": run.name, "role": run.role, "status": "ok" if auc else "failed: x", "val/auc": auc or math.nan}
        row.update({"val/auc_ci_low": (auc or math.nan) - 0.05, "val/auc_ci_high": (auc or math.nan) + 0.05, "test/auc": math.nan})
        row.update({"sec/epoch": 1.0, "sec/epoch_ci_low": 0.9, "sec/epoch_ci_high": 1.1})
        rows.append(row)
    results = Results(study, pd.DataFrame(rows), study_configs(study), "val/auc")
    analysis = analyse_fusion(results, tmp_path)
    verdicts = {c.b: c.verdict for c in analysis.comparisons}
    assert verdicts == {"late_fusion": HOLDS, "mrnet": "inconclusive (intervals overlap)", "cnn3d": NOT_MEASURED, "single-coronal": HOLDS}
    assert (tmp_path / "fusion.png").stat().st_size > 0


# ---- tiny end-to-end studies ------------------------------------------------------------------


def test_depth_study_writes_the_report_with_intervals_and_verdicts(tmp_path, small_root):
    runs = [
        {"name": "blocks-0", "role": "imagenet", "set": {"model.trainable_blocks": 0}},
        {"name": "blocks-all", "role": "imagenet", "set": {"model.trainable_blocks": "all"}},
        {"name": "scratch", "role": "scratch", "set": {"model.pretrained": False}},
    ]
    path = study_file(tmp_path, "depth", runs, quick={"overrides": ["train.epochs=1", "train.lr=2e-3"]})
    overrides = [o for o in tiny(small_root, tmp_path, **{"data.val_fraction": "0.25"}) if not o.startswith("train.epochs=")]
    main([str(path), "--quick", "--bootstrap", "50", *overrides])  # --quick: 1 epoch

    out = tmp_path / "tiny-depth-quick"
    frame = pd.read_csv(out / "comparison.csv")
    assert list(frame["run"]) == ["blocks-0", "blocks-all", "scratch"] and (frame["status"] == "ok").all()
    assert (frame["params/trainable"].iloc[0] < frame["params/trainable"].iloc[1]) and frame["test/auc"].notna().all()
    metrics = (out / "blocks-0" / "metrics.jsonl").read_text().splitlines()
    assert len(metrics) == 1 and yaml.safe_load((out / "scratch" / "config.yaml").read_text())["train"]["lr"] == 2e-3
    report = (out / "report.md").read_text()
    assert "# tiny depth" in report and "**Paper**: A. Author (2020)" in report and "**Claim**: it holds" in report
    assert "| blocks-0 | imagenet |" in report and "test/auc [95% CI]" in report and "sec/epoch [95% CI]" in report
    assert "Tuning only the top blocks saves training time" in report
    assert report.count("| blocks-0 vs blocks-all |") == 2 and "x the time" in report
    assert "inconclusive (no interval)" in report  # one epoch: no interval for seconds per epoch
    assert any(v in report for v in (HOLDS, FAILS, "inconclusive"))
    assert "**Warning**" in report and "model.pretrained=false" in report  # the base has no ImageNet weights
    assert "![AUC and seconds per epoch per run](depth.png)" in report and (out / "depth.png").stat().st_size > 0
    assert (out / "comparison.png").stat().st_size > 0


def test_uap_study_measures_fooling_rates_with_wilson_intervals(tmp_path, small_root):
    runs = [
        {"name": "pretrained", "role": "pretrained", "set": {"model.trainable_blocks": "all"}},
        {"name": "scratch", "role": "scratch", "set": {"model.pretrained": False}},
    ]
    settings = {"max_iter": 1, "random_trials": 1, "crops": 3}
    path = study_file(tmp_path, "uap", runs, settings=settings)
    out_dir, frame = run_study(path, tiny(small_root, tmp_path), n_bootstrap=20)

    assert (frame["status"] == "ok").all(), frame["status"].tolist()
    assert sorted(p.name for p in (out_dir / "natural-images").iterdir()) == [f"grace_hopper-{i:03d}.png" for i in range(3)]
    for source in ("train", "natural"):
        uap = json.loads((out_dir / "pretrained" / f"uap-{source}" / "uap.json").read_text())
        assert uap["settings"]["n_eval"] == 10 and uap["settings"]["split"] == "valid"
        assert (
            (frame[f"fooling/{source}_ci_low"] <= frame[f"fooling/{source}"])
            & (frame[f"fooling/{source}"] <= frame[f"fooling/{source}_ci_high"])
        ).all()
    natural = json.loads((out_dir / "scratch" / "uap-natural" / "uap.json").read_text())["settings"]
    trained = json.loads((out_dir / "scratch" / "uap-train" / "uap.json").read_text())["settings"]
    assert natural["radius"] == pytest.approx(trained["radius"], rel=1e-4)  # the same norm for both sources
    report = (out_dir / "report.md").read_text()
    assert "## Fooling rates" in report and "random, same norm [95% CI]" in report and "Wilson" in report
    assert "| pretrained natural UAP vs pretrained random |" in report and "| scratch natural UAP vs pretrained natural UAP |" in report
    assert (out_dir / "uap.png").stat().st_size > 0

    # a rerun with train.resume=auto keeps the finished runs and their UAPs
    _, again = run_study(path, [*tiny(small_root, tmp_path), "train.resume=auto"], n_bootstrap=20)
    assert again["fooling/natural"].tolist() == frame["fooling/natural"].tolist()


def test_stepwise_study_starts_the_target_run_from_the_intermediate_one(tmp_path, small_root):
    other = generate_mrnet(tmp_path / "other", num_train=12, num_valid=8, image_size=32, min_slices=4, max_slices=5, seed=5)
    runs = [
        {"name": "intermediate", "role": "intermediate", "set": {"data.root": str(other), "data.tasks": ["abnormal"]}},
        {"name": "stepwise", "role": "stepwise", "set": {"model.init_from": "run:intermediate"}},
        {"name": "direct", "role": "direct", "set": {}},
    ]
    path = study_file(tmp_path, "stepwise", runs)
    out_dir, frame = run_study(path, tiny(small_root, tmp_path), n_bootstrap=20)
    assert (frame["status"] == "ok").all(), frame["status"].tolist()
    stepwise = yaml.safe_load((out_dir / "stepwise" / "config.yaml").read_text())
    assert stepwise["model"]["init_from"] == str(out_dir / "intermediate" / "checkpoints" / "best.pt")
    report = (out_dir / "report.md").read_text()
    assert "| stepwise vs direct |" in report and "Intermediate run `intermediate`" in report and "tasks ['abnormal']" in report
