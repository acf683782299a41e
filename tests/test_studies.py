"""Seed studies (`transmed study`): study files parse and expand, verdicts follow the intervals, and
tiny end-to-end studies write report.md with the measured table and the claim-vs-measured verdicts."""

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import tiny_overrides
from omegaconf import OmegaConf

from transmed.commands._common import run_main
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
    run_study,
    seeds_and_studies,
    study_configs,
)
from transmed.experiments.studies.stats import seconds_interval, uniform_resamples

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


def test_there_are_the_six_shipped_studies():
    assert [p.stem for p in STUDIES] == ["depth", "fusion", "modes", "semi", "stepwise", "uap"]


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
        configs = [cfg for _, _, cfg in study_configs(study)]
        assert study.seeds == [configs[0].seed + i for i in range(3)] and spec["seeds"] == 3  # full runs: 3 seeds
        assert len({cfg.run_name for cfg in configs}) == 3 * len(study.runs) and len(study.runs) >= 2
        assert {cfg.seed for cfg in configs} == set(study.seeds) and configs[0].run_name.endswith(f"/seed-{study.seeds[0]}")
        assert all(cfg.wandb.group == study.group == spec["group"] for cfg in configs)
        held_out = 0.25 if study.kind == "semi" else 0.2  # semi: a quarter of each fraction's 24, 60, 120 labelled studies
        assert all(cfg.data.val_fraction == held_out for cfg in configs)  # valid chooses the epoch, test reports
        assert {run.role for run in study.runs} >= set(KINDS[study.kind].required)
        assert study.paper and study.claim
        quick = load_study(path, base=base, quick=True)
        assert quick.group == f"{spec['group']}-quick" and set(spec["quick"]["overrides"]) <= set(quick.overrides)
        assert len(quick.seeds) == 1
        configs = [cfg for _, seed, cfg in study_configs(quick)]
        names = [run.name for run in study.runs]
        if study.kind == "depth":  # every stage count of the base's backbone, then all, then from scratch
            stages = len([n for n in names if n.startswith("blocks-")]) - 1
            assert names == [*(f"blocks-{k}" for k in range(stages)), "blocks-all", "scratch"] and stages >= 4
            assert configs[-1].model.pretrained is False
        if study.kind == "fusion":
            modalities = list(configs[0].data.modalities)
            assert names[:4] == ["transmed", "late_fusion", "mrnet", "cnn3d"] and names[4:] == [f"single-{m}" for m in modalities]
            assert [list(cfg.data.modalities) for cfg in configs[-len(modalities) :]] == [[m] for m in modalities]
        if study.kind == "stepwise":
            intermediate, stepwise, _ = configs
            assert stepwise.model.init_from == str(Path(intermediate.output_dir) / intermediate.run_name / "checkpoints" / "best.pt")
            assert intermediate.data.root != stepwise.data.root and list(intermediate.data.tasks) == ["abnormal"]
            assert "model.init_from=run:intermediate" in stepwise.wandb.tags  # not the path: W&B tags are at most 64 characters
        if study.kind == "uap":
            assert study.settings["natural_images"] == "sample" and quick.settings["max_iter"] < study.settings["max_iter"]
            assert study.settings["targeted"] and study.settings["early_stop"] is False  # Minagi et al.: every pass


def test_each_seed_of_a_stepwise_run_starts_from_the_intermediate_run_of_the_same_seed():
    study = load_study(ROOT / "configs" / "studies" / "stepwise.yaml", base=DEMO, seeds=[3, 7])
    configs = {(run.name, seed): cfg for run, seed, cfg in study_configs(study)}
    for seed in (3, 7):
        intermediate, stepwise = configs[("intermediate", seed)], configs[("stepwise", seed)]
        assert stepwise.seed == intermediate.seed == seed
        assert stepwise.model.init_from == str(Path(intermediate.output_dir) / intermediate.run_name / "checkpoints" / "best.pt")
    with pytest.raises(ConfigError, match="'seeds' must be a count >= 1"):
        load_study(ROOT / "configs" / "studies" / "stepwise.yaml", base=DEMO, seeds=0)


def test_run_scoped_overrides_apply_to_that_run_after_its_set():
    path = ROOT / "configs" / "studies" / "stepwise.yaml"
    study = load_study(path, ["train.epochs=2", "intermediate:data.root=/elsewhere", "direct:train.lr=0.5"], base=DEMO, quick=True)
    intermediate, stepwise, direct = [cfg for _, _, cfg in study_configs(study)]
    assert intermediate.data.root == "/elsewhere" and stepwise.data.root == direct.data.root != "/elsewhere"
    assert direct.train.lr == 0.5 and stepwise.train.lr != 0.5
    assert {cfg.train.epochs for cfg in (intermediate, stepwise, direct)} == {2}
    resumed = study_configs(load_study(path, ["train.resume=auto"], base=DEMO, quick=True))  # finishing a study names no run
    seed = resumed[0][1]
    assert [cfg.run_name for _, _, cfg in resumed] == [f"study-stepwise-quick/{n}/seed-{seed}" for n in ("intermediate", "stepwise", "direct")]
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


SEMI = ROOT / "configs" / "studies" / "semi.yaml"
SEMI_RUNS = [{"name": "labelled", "role": "labelled", "set": {}}, {"name": "tri_net", "role": "tri_net", "set": {"train.semi.method": "tri_net"}}]


def test_the_semi_study_runs_each_method_once_per_labelled_fraction():
    study = load_study(SEMI, ["tri_net:train.semi.passes=7"])
    methods = ("labelled", "pseudo_label", "tri_net")
    assert [run.name for run in study.runs] == [f"{m}-{pct}pct" for pct in (10, 25, 50) for m in methods]
    configs = {(run.name, seed): cfg for run, seed, cfg in study_configs(study)}
    assert len(configs) == 27 and study.seeds == [42, 43, 44] and study.settings["pool"] == 240
    for pct, labelled in ((10, 24), (25, 60), (50, 120)):
        root = f"data/synthetic-knee-semi-{pct}pct"
        fraction = [configs[f"{m}-{pct}pct", seed] for m in methods for seed in study.seeds]
        # one generated set per fraction: its runs ask the generator for the same thing
        assert len({json.dumps(OmegaConf.to_container(cfg.data.synthetic)) for cfg in fraction}) == 1
        for method in methods:
            cfg = configs[f"{method}-{pct}pct", 43]
            assert cfg.data.format == "synthetic" and cfg.data.root == root and cfg.data.synthetic.seed == 0
            assert (cfg.data.synthetic.num_train, cfg.data.synthetic.num_unlabelled, cfg.data.synthetic.num_valid) == (labelled, 240 - labelled, 60)
            assert cfg.data.val_fraction == 0.25 and cfg.data.synthetic.image_size == cfg.data.image_size == 64
            assert cfg.train.semi.method == ("none" if method == "labelled" else method)
            assert cfg.data.unlabelled_root == (None if method == "labelled" else f"{root}/unlabelled")
            assert cfg.train.semi.passes == (7 if method == "tri_net" else 5)  # tri_net:key=value reaches every tri_net run
            assert (cfg.train.epochs, cfg.train.semi.warmup_epochs, cfg.train.semi.balance, cfg.data.augment) == (30, 10, True, True)
            assert cfg.model.pretrained == "weights/efficientnet-lite0.safetensors"  # demo-transfer's ImageNet stem
            assert cfg.run_name == f"study-semi/{method}-{pct}pct/seed-43" and "role=" + method in cfg.wandb.tags
    quick = load_study(SEMI, ["data.root=/elsewhere/semi"], quick=True)
    configs = [cfg for _, _, cfg in study_configs(quick)]
    assert [run.name for run in quick.runs] == ["labelled-10pct", "pseudo_label-10pct", "tri_net-10pct"] and quick.seeds == [42]
    assert all((cfg.train.epochs, cfg.train.semi.warmup_epochs, cfg.data.root) == (4, 2, "/elsewhere/semi-10pct") for cfg in configs)


@pytest.mark.parametrize(
    "runs, extra, overrides, message",
    [
        (
            [SEMI_RUNS[0], {"name": "tri_net", "role": "tri_net", "set": {"train.semi.method": "pseudo_label"}}],
            {},
            [],
            "run 'tri_net': role tri_net trains with train.semi.method=tri_net, the run has pseudo_label",
        ),
        (SEMI_RUNS[:1], {}, [], r"needs runs with the role\(s\) \['tri_net'\]"),
        (SEMI_RUNS, {"settings": {"fractions": [0.1, 1.5]}}, [], r"setting 'fractions' must be a list of labelled fractions in \(0, 1\)"),
        (SEMI_RUNS, {"settings": {"fractions": [0.1, 0.1]}}, [], r"repeats a fraction: \[0.1, 0.1\]"),
        (
            SEMI_RUNS,
            {"settings": {"fractions": [0.01]}},
            ["data.val_fraction=0.25"],
            "fraction 0.01 of a pool of 240 labels 2 studies, of which data.val_fraction=0.25 holds out 0 to choose the epoch",
        ),
        (SEMI_RUNS, {"settings": {"pool": "many"}}, [], "setting 'pool' must be a number of training studies"),
        (SEMI_RUNS, {"settings": {"bar_auc": "high"}}, [], "setting 'bar_auc' must be a number"),
        (SEMI_RUNS, {"settings": {"fraction": [0.1]}}, [], r"unknown setting\(s\) \['fraction'\] for study 'semi'"),
        (SEMI_RUNS, {}, ["data.format=mrnet"], "'fractions' splits a synthetic set .data.format=synthetic., not data.format=mrnet"),
    ],
)
def test_a_bad_semi_study_file_fails_with_one_clear_line(tmp_path, runs, extra, overrides, message):
    path = study_file(tmp_path, "semi", runs, **extra)
    with pytest.raises(ConfigError, match=message) as err:
        study_configs(load_study(path, [f"output_dir={tmp_path / 'runs'}", *overrides]))
    assert "\n" not in str(err.value) and str(path) in str(err.value)
    assert not (tmp_path / "runs").exists()


# ---- intervals and verdicts -------------------------------------------------------------------


def test_the_seed_and_study_bootstrap_covers_both_sources_of_noise():
    rng = np.random.default_rng(0)
    n = 200
    studies = uniform_resamples(n, 500, rng)
    assert studies.shape == (500, n) and (studies.sum(axis=1) == n).all()
    values = [rng.normal(loc, 0.3, n) for loc in (0.0, 0.6, 0.3)]  # three seeds of a per-study difference
    per_seed = lambda s, w: w @ values[s] / w.sum(axis=1)  # noqa: E731
    both = seeds_and_studies(per_seed, 3, studies, np.random.default_rng(1))
    assert both.value == pytest.approx(np.mean([v.mean() for v in values]))
    assert both.low < both.value < both.high
    one = seeds_and_studies(per_seed, 1, studies, np.random.default_rng(1))  # one seed: the studies' interval only
    assert one.value == pytest.approx(values[0].mean()) and one.high - one.low == pytest.approx(2 * 1.96 * 0.3 / math.sqrt(n), rel=0.3)
    same = seeds_and_studies(lambda s, w: w @ values[0] / w.sum(axis=1), 3, studies, np.random.default_rng(1))
    assert same.high - same.low < both.high - both.low  # seeds that agree add no width
    assert not seconds_interval([[2.0]]).has_interval and seconds_interval([[2.0]]).value == 2.0
    diff = seconds_interval([[2.0, 2.2], [2.1, 2.3]], [[1.0, 1.1], [1.0, 1.2]])
    assert diff.value == pytest.approx(1.075) and 0 < diff.low <= diff.value <= diff.high


def test_a_verdict_follows_the_paired_difference():
    def verdict(diff, expect="higher", unit="auc", a=(0.9, 0.85, 0.95), b=(0.7, 0.6, 0.8)):
        return Comparison("c", "a", "b", Interval(*a), Interval(*b), Interval(*diff), expect, unit)

    assert verdict((0.2, 0.1, 0.3)).verdict == HOLDS
    assert verdict((0.2, 0.1, 0.3), expect="lower").verdict == FAILS
    # overlapping arm intervals, but a paired difference away from 0: the pairing decides
    assert verdict((0.05, 0.01, 0.09), a=(0.75, 0.6, 0.9), b=(0.7, 0.55, 0.85)).verdict == HOLDS
    assert verdict((0.2, -0.01, 0.3)).verdict == "inconclusive (the difference's interval holds 0)"
    assert verdict((0.2, math.nan, math.nan)).verdict == "inconclusive (no interval)"
    assert verdict((math.nan,) * 3).verdict == NOT_MEASURED
    assert verdict((0.2, 0.1, 0.3)).difference() == "+0.200 AUC [+0.1, +0.3]"
    assert verdict((-5.0, -6.0, -4.0), "lower", "seconds", (5.0, 4.0, 6.0), (10.0, 9.0, 11.0)).difference() == (
        "-5.00 s [-6, -4] (0.50x the time, -50%)"
    )
    assert verdict((0.3, 0.2, 0.4), unit="rate", a=(0.4, 0.3, 0.5), b=(0.1, 0.05, 0.2)).difference() == "+30.0 points [+20.0, +40.0], 4.0x"


def fake_predictions(folder: Path, labels: np.ndarray, signal: float, seed: int, split: str = "valid") -> None:
    """predictions-{split}.csv of a model whose scores carry `signal` times the label, plus noise."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    frame = pd.DataFrame({"id": [f"{i:04d}" for i in range(len(labels))]})
    for k, name in enumerate(("abnormal", "acl", "meniscus")):
        logits = signal * (2 * labels[:, k] - 1) + rng.normal(0, 1, len(labels))
        frame[f"prob/{name}"], frame[f"logit/{name}"] = 1 / (1 + np.exp(-logits / 2)), logits  # calibrated at T = 2
    for k, name in enumerate(("abnormal", "acl", "meniscus")):
        frame[f"label/{name}"] = labels[:, k]
    frame.to_csv(folder / f"predictions-{split}.csv", index=False)
    (folder / "metrics.jsonl").write_text("".join(json.dumps({"epoch": e, "sec/epoch": 1.0 + 0.1 * e}) + "\n" for e in (1, 2)))


def test_fusion_analysis_compares_transmed_with_each_baseline_and_the_best_single_modality(tmp_path):
    path = ROOT / "configs" / "studies" / "fusion.yaml"
    study = load_study(path, [f"output_dir={tmp_path}"], base=DEMO, seeds=[0, 1])
    signal = {"transmed": 2.0, "late_fusion": 0.3, "mrnet": 1.9, "cnn3d": None, "single-sagittal": 0.2, "single-coronal": 0.5, "single-axial": 0.0}
    labels = np.random.default_rng(9).integers(0, 2, (120, 3))
    rows, configs = [], []
    for run, seed, cfg in study_configs(study):
        folder = tmp_path / run.name / f"seed-{seed}"
        value = signal[run.name]
        if value is not None:
            fake_predictions(folder, labels, value, seed * 100 + len(rows))
        row = {"run": run.name, "role": run.role, "seed": seed, "dir": str(folder), "status": "ok" if value is not None else "failed: x"}
        row.update({"val/auc": value if value is not None else math.nan, "test/auc": math.nan})
        rows.append(row)
        configs.append(cfg)
    results = Results(study, pd.DataFrame(rows), configs, "val/auc", n_bootstrap=200)
    analysis = analyse_fusion(results, tmp_path)
    verdicts = {c.b: c.verdict for c in analysis.comparisons}
    assert verdicts == {
        "late_fusion": HOLDS,
        "mrnet": "inconclusive (the difference's interval holds 0)",
        "cnn3d": NOT_MEASURED,
        "single-coronal": HOLDS,
    }
    late = next(c for c in analysis.comparisons if c.b == "late_fusion")
    assert late.diff.value == pytest.approx(late.ia.value - late.ib.value)  # the mean of paired differences
    assert late.ia.low < late.ia.value < late.ia.high and late.diff.low > 0
    assert (tmp_path / "fusion.png").stat().st_size > 0


def fake_semi_results(tmp_path: Path, study, signal: dict, logs: dict) -> Results:
    """A semi study's results as the runner gathers them, from fake predictions on the test split: `signal` per
    run (None: the run failed) and `logs` {(run, seed): the lines of its semi.jsonl}."""
    labels = np.random.default_rng(9).integers(0, 2, (120, 3))
    rows, configs = [], []
    for run, seed, cfg in study_configs(study):
        folder = tmp_path / run.name / f"seed-{seed}"
        value = signal[run.name]
        if value is not None:
            fake_predictions(folder, labels, value, seed * 100 + len(rows), split="test")
        for_seed = logs.get((run.name, seed))
        if for_seed is not None:
            folder.mkdir(parents=True, exist_ok=True)
            (folder / "semi.jsonl").write_text("\n".join(for_seed) + "\n")
        row = {"run": run.name, "role": run.role, "seed": seed, "dir": str(folder), "status": "ok" if value is not None else "failed: x"}
        auc = math.nan if value is None else 0.5 + value / 5
        row.update({"val/auc": auc, "test/auc": auc, "test/auc_ci_low": auc - 0.1, "test/auc_ci_high": auc + 0.1})
        row.update({"best_epoch": 3, "params/trainable": 1000, "sec/epoch": 1.0})
        rows.append(row)
        configs.append(cfg)
    return Results(study, pd.DataFrame(rows), configs, "test/auc", n_bootstrap=200)


def per_seed_mean_auc(path: Path) -> float:
    """The mean over tasks of one run's test AUC, from its predictions (sigmoid of the logits), by scikit-learn."""
    from sklearn.metrics import roc_auc_score

    frame = pd.read_csv(path)
    return float(np.mean([roc_auc_score(frame[f"label/{t}"], frame[f"logit/{t}"]) for t in ("abnormal", "acl", "meniscus")]))


def test_semi_analysis_compares_each_method_with_the_labelled_studies_alone_per_fraction(tmp_path):
    from transmed.experiments.studies.analysis import analyse_semi
    from transmed.experiments.studies.runner import write_report

    study = load_study(SEMI, [f"output_dir={tmp_path}"], seeds=[0, 1, 2])
    signal = {
        "labelled-10pct": 0.4, "pseudo_label-10pct": 0.4, "tri_net-10pct": 1.5,  # tri_net gains, pseudo-labels do not
        "labelled-25pct": 1.0, "pseudo_label-25pct": 2.0, "tri_net-25pct": 0.2,  # pseudo-labels gain, tri_net loses
        "labelled-50pct": 1.0, "pseudo_label-50pct": 1.0, "tri_net-50pct": None,  # tri_net failed
    }  # fmt: skip
    rounds = lambda method, correct: [  # noqa: E731
        json.dumps({"epoch": 3, "method": method, "pseudo_labelled": 20, "edited": 4, "entries": 40, "correct": 30}),
        json.dumps({"epoch": 4, "method": method, "pseudo_labelled": 54, "edited": 6, "entries": 120, "correct": correct, "per_classifier": [54]}),
    ]
    logs = {("pseudo_label-10pct", seed): rounds("pseudo_label", 90) for seed in (0, 1, 2)}
    logs.update({("tri_net-10pct", seed): rounds("tri_net", None) for seed in (0, 1, 2)})
    logs["tri_net-10pct", 2] = [*logs["tri_net-10pct", 2], '{"epoch": 5, "meth']  # cut off by a crash: left out
    logs["tri_net-10pct", 1] = [line.replace('"epoch": 4,', '"epoch": 4, "unlabelled": 108,') for line in logs["tri_net-10pct", 1]]
    results = fake_semi_results(tmp_path, study, signal, logs)
    analysis = analyse_semi(results, tmp_path)

    verdicts = {(c.a, c.b): c.verdict for c in analysis.comparisons}
    assert verdicts == {
        ("tri_net-10pct", "labelled-10pct"): HOLDS,
        ("pseudo_label-10pct", "labelled-10pct"): "inconclusive (the difference's interval holds 0)",
        ("tri_net-25pct", "labelled-25pct"): FAILS,
        ("pseudo_label-25pct", "labelled-25pct"): HOLDS,
        ("tri_net-50pct", "labelled-50pct"): NOT_MEASURED,
        ("pseudo_label-50pct", "labelled-50pct"): "inconclusive (the difference's interval holds 0)",
    }
    for c in analysis.comparisons[:4]:  # the mean over seeds of the paired per-seed differences, checked by scikit-learn
        expected = np.mean(
            [per_seed_mean_auc(tmp_path / c.a / f"seed-{s}" / "predictions-test.csv") - per_seed_mean_auc(tmp_path / c.b / f"seed-{s}" / "predictions-test.csv") for s in (0, 1, 2)]
        )
        assert c.diff.value == pytest.approx(expected, abs=1e-9) and c.diff.low <= c.diff.value <= c.diff.high
        assert c.ia.value == pytest.approx(np.mean([per_seed_mean_auc(tmp_path / c.a / f"seed-{s}" / "predictions-test.csv") for s in (0, 1, 2)]))
    tri = analysis.comparisons[0]
    assert tri.claim == "Tri-net with the unlabelled studies beats training on the labelled studies alone, at 10% labelled (24 of 240)"
    assert tri.diff.low > 0.03  # the fake gain is far above the bar

    write_report(results, analysis, tmp_path)
    report = (tmp_path / "report.md").read_text()
    assert "# Semi-supervised learning from unlabelled studies" in report and "Tri-net for semi-supervised deep learning" in report
    assert "8.30% error on CIFAR-10 with 4,000 labels" in report and "3 seed(s)" in report
    assert "| tri_net-10pct vs labelled-10pct |" in report and "| pseudo_label-25pct vs labelled-25pct |" in report
    assert "Verdicts: 2 hold, 1 do not hold, 2 inconclusive, 1 not measured." in report
    bar = f"Bar (issue 23): tri_net - labelled >= +0.030 test AUC at 10% labelled, mean over 3 seeds: measured {tri.diff.value:+.3f}"
    assert f"- {bar}; the 95% interval's low end {tri.diff.low:+.3f} is above the bar: **met**." in report
    assert "## Test AUC per labelled fraction (mean over seeds)" in report
    assert f"| 10% labelled (24 of 240) | 18 + 6 | 216 | {results.auc('labelled-10pct').text()} |" in report
    assert "| 25% labelled (60 of 240) | 45 + 15 | 180 |" in report and "| 50% labelled (120 of 240) | 90 + 30 | 120 |" in report
    assert "## Pseudo-labels in each run's last round (`semi.jsonl`)" in report
    assert report.count("| pseudo_label-10pct |") == 1 + 3 + 3  # the per-run table, the per-seed table, a row per seed here
    assert "| pseudo_label-10pct | 0 | 2 | 4 | pseudo_label | 54 (25%) | 6 | 120 | 90 (75%) |" in report
    assert "| tri_net-10pct | 2 | 2 | 4 | tri_net | 54 (25%) | 6 | 120 | unknown |" in report  # the cut-off line left out
    assert "| tri_net-10pct | 1 | 2 | 4 | tri_net | 54 (50%) | 6 | 120 | unknown |" in report  # the run's own count of unlabelled studies
    missing = "pseudo_label-25pct (seeds 0, 1, 2), tri_net-25pct (seeds 0, 1, 2), pseudo_label-50pct (seeds 0, 1, 2), tri_net-50pct (seeds 0, 1, 2)"
    assert f"- No pseudo-label record (`semi.jsonl`) for {missing}." in report  # a failed run without one is named too
    assert "data.synthetic.seed=0" in report and "the 60 studies of the test split" in report
    assert "![test AUC per labelled fraction and method](semi.png)" in report and (tmp_path / "semi.png").stat().st_size > 0


def test_the_semi_bar_on_one_seed_says_it_asks_for_three(tmp_path):
    from transmed.experiments.studies.analysis import analyse_semi

    study = load_study(SEMI, [f"output_dir={tmp_path}"], quick=True)  # 10% labelled only, one seed
    signal = {"labelled-10pct": 1.0, "pseudo_label-10pct": 1.0, "tri_net-10pct": 1.0}
    analysis = analyse_semi(fake_semi_results(tmp_path, study, signal, {}), tmp_path)
    assert [(c.a, c.b) for c in analysis.comparisons] == [("tri_net-10pct", "labelled-10pct"), ("pseudo_label-10pct", "labelled-10pct")]
    bar = next(note for note in analysis.notes if note.startswith("Bar (issue 23)"))
    assert bar.endswith("is below the bar: **not met** (on 1 seed(s); the bar asks for 3).")
    assert "No pseudo-label record (`semi.jsonl`) for pseudo_label-10pct (seed 42), tri_net-10pct (seed 42)." in analysis.notes
    study = load_study(SEMI, [f"output_dir={tmp_path}", "train.semi.warmup_epochs=4"], quick=True)
    analysis = analyse_semi(fake_semi_results(tmp_path, study, signal, {}), tmp_path)
    assert "pseudo_label-10pct (seed 42; train.semi.warmup_epochs covers every epoch, so no round ran)" in analysis.notes[-1]
    assert [heading for heading, _ in analysis.tables] == ["Test AUC per labelled fraction (mean over seeds)"]
    study = load_study(SEMI, [f"output_dir={tmp_path}"], quick=True, seeds=1)
    study.settings["bar_fraction"] = 0.25  # no runs at that fraction
    analysis = analyse_semi(fake_semi_results(tmp_path, study, signal, {}), tmp_path)
    assert "Bar (issue 23): tri_net - labelled >= +0.030 test AUC at 25% labelled, mean over 3 seeds: no run at that fraction." in analysis.notes


def test_the_semi_claims_are_also_measured_at_the_last_epoch(tmp_path):
    from transmed.experiments.studies.analysis import analyse_semi

    study = load_study(SEMI, [f"output_dir={tmp_path}"], quick=True, seeds=[0, 1, 2])  # 10% labelled, 3 seeds
    signal = {"labelled-10pct": 1.0, "pseudo_label-10pct": 1.0, "tri_net-10pct": 1.0}  # best.pt: no gain
    results = fake_semi_results(tmp_path, study, signal, {})
    labels = np.random.default_rng(9).integers(0, 2, (120, 3))
    for i, row in enumerate(results.rows()):  # last.pt: tri_net and pseudo_label gain (`measure_last`'s files)
        fake_predictions(Path(row["dir"]) / "last", labels, 1.0 if row["role"] == "labelled" else 2.0, 50 + i, split="test")
    analysis = analyse_semi(results, tmp_path)
    claims = [c.claim for c in analysis.comparisons]
    assert claims[2] == "(at the last epoch, which nothing chose) " + claims[0]
    assert claims[3] == "(next to it; at the last epoch, which nothing chose) " + claims[1].removeprefix("(next to it) ")
    for c in analysis.comparisons[2:]:
        last = [per_seed_mean_auc(tmp_path / arm / f"seed-{s}" / "last" / "predictions-test.csv") for arm in (c.a, c.b) for s in (0, 1, 2)]
        assert c.diff.value == pytest.approx(np.mean(last[:3]) - np.mean(last[3:]), abs=1e-9) and c.verdict == HOLDS
    assert analysis.comparisons[0].verdict != HOLDS  # best.pt's claims are what they were
    bar = next(note for note in analysis.notes if note.startswith("Bar (issue 23)"))
    assert f"measured {analysis.comparisons[0].diff.value:+.3f}" in bar  # the bar stays on best.pt, as issue 23 sets it
    assert any("also measured at the last epoch" in note for note in analysis.notes)


# ---- tiny end-to-end studies ------------------------------------------------------------------


def test_depth_study_writes_the_report_with_intervals_and_verdicts(tmp_path, small_root):
    runs = [
        {"name": "blocks-0", "role": "imagenet", "set": {"model.trainable_blocks": 0}},
        {"name": "blocks-all", "role": "imagenet", "set": {"model.trainable_blocks": "all"}},
        {"name": "scratch", "role": "scratch", "set": {"model.pretrained": False}},
    ]
    path = study_file(tmp_path, "depth", runs, quick={"overrides": ["train.epochs=1", "train.lr=2e-3"], "seeds": [1, 2]})
    overrides = [o for o in tiny(small_root, tmp_path, **{"data.val_fraction": "0.25"}) if not o.startswith("train.epochs=")]
    main([str(path), "--quick", "--bootstrap", "50", *overrides])  # --quick: 1 epoch, the quick seeds

    out = tmp_path / "tiny-depth-quick"
    frame = pd.read_csv(out / "comparison.csv")
    assert list(frame["run"]) == [f"{run} seed-{seed}" for run in ("blocks-0", "blocks-all", "scratch") for seed in (1, 2)]
    assert (frame["status"] == "ok").all() and list(frame["seed"]) == [1, 2] * 3
    assert (frame["params/trainable"].iloc[0] < frame["params/trainable"].iloc[2]) and frame["test/auc"].notna().all()
    for seed in (1, 2):
        metrics = (out / "blocks-0" / f"seed-{seed}" / "metrics.jsonl").read_text().splitlines()
        assert len(metrics) == 1 and yaml.safe_load((out / "scratch" / f"seed-{seed}" / "config.yaml").read_text())["seed"] == seed
        assert (out / "blocks-0" / f"seed-{seed}" / "predictions-test.csv").is_file()
    assert yaml.safe_load((out / "scratch" / "seed-1" / "config.yaml").read_text())["train"]["lr"] == 2e-3
    report = (out / "report.md").read_text()
    assert "# tiny depth" in report and "**Paper**: A. Author (2020)" in report and "**Claim**: it holds" in report
    assert "| blocks-0 | imagenet |" in report and "test AUC [95% CI]" in report and "sec/epoch [95% CI]" in report
    assert "Measured on the test split, which did not choose the epoch." in report and "2 seed(s)" in report
    assert "## Per seed" in report and report.count("| blocks-0 | 1 |") == 1 and report.count("| blocks-0 | 2 |") == 1
    assert "Tuning only the top blocks saves training time" in report
    assert report.count("| blocks-0 vs blocks-all |") == 2 and "x the time" in report
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
    path = study_file(tmp_path, "uap", runs, settings=settings, seeds=1)
    out_dir, frame = run_study(path, tiny(small_root, tmp_path), n_bootstrap=20)

    assert (frame["status"] == "ok").all(), frame["status"].tolist()
    assert sorted(p.name for p in (out_dir / "natural-images").iterdir()) == [f"grace_hopper-{i:03d}.png" for i in range(3)]
    for source in ("train", "natural", "targeted"):
        uap = json.loads((out_dir / "pretrained" / "seed-42" / f"uap-{source}" / "uap.json").read_text())
        assert uap["settings"]["n_eval"] == 10 and uap["settings"]["split"] == "valid"
        for control, achieved in zip(uap["settings"]["control_norm"], uap["settings"]["achieved_norm"]):
            assert abs(control - achieved) <= 1e-6 * achieved  # the control at the UAP's own norm
        assert frame[f"uap/{source}/achieved_norm"].le(frame[f"uap/{source}/radius"] * (1 + 1e-5)).all()
        relative = (frame[f"uap/{source}/control_norm"] - frame[f"uap/{source}/achieved_norm"]).abs() / frame[f"uap/{source}/achieved_norm"]
        assert relative.fillna(0).le(1e-6).all()  # the report's random's norm is the UAP's (0 / 0 where a UAP stayed at zero)
    assert uap["settings"]["target"] in ("abnormal", "acl", "meniscus")
    natural = json.loads((out_dir / "scratch" / "seed-42" / "uap-natural" / "uap.json").read_text())["settings"]
    trained = json.loads((out_dir / "scratch" / "seed-42" / "uap-train" / "uap.json").read_text())["settings"]
    assert natural["radius"] == pytest.approx(trained["radius"], rel=1e-4)  # the same budget for both sources
    report = (out_dir / "report.md").read_text()
    assert "## Rates on held-out studies, mean over 1 seed(s)" in report and "random, same norm [95% CI]" in report
    assert "achieved norm" in report and "random's norm" in report and "budget (radius)" in report and "crafting-set rate" in report
    assert "| pretrained natural UAP vs pretrained random |" in report and "| scratch natural UAP vs pretrained natural UAP |" in report
    assert "| pretrained training UAP vs pretrained random (train) |" in report
    assert "| pretrained targeted natural UAP vs pretrained random (targeted) |" in report
    assert (out_dir / "uap.png").stat().st_size > 0

    # a rerun with train.resume=auto keeps the finished runs and their UAPs
    _, again = run_study(path, [*tiny(small_root, tmp_path), "train.resume=auto"], n_bootstrap=20)
    assert again["uap/natural/rate"].tolist() == frame["uap/natural/rate"].tolist()


def test_stepwise_study_starts_the_target_run_from_the_intermediate_one(tmp_path, small_root):
    other = generate_mrnet(tmp_path / "other", num_train=12, num_valid=8, image_size=32, min_slices=4, max_slices=5, seed=5)
    runs = [
        {"name": "intermediate", "role": "intermediate", "set": {"data.root": str(other), "data.tasks": ["abnormal"]}},
        {"name": "stepwise", "role": "stepwise", "set": {"model.init_from": "run:intermediate"}},
        {"name": "direct", "role": "direct", "set": {}},
    ]
    path = study_file(tmp_path, "stepwise", runs, seeds=1)
    out_dir, frame = run_study(path, tiny(small_root, tmp_path), n_bootstrap=20)
    assert (frame["status"] == "ok").all(), frame["status"].tolist()
    stepwise = yaml.safe_load((out_dir / "stepwise" / "seed-42" / "config.yaml").read_text())
    assert stepwise["model"]["init_from"] == str(out_dir / "intermediate" / "seed-42" / "checkpoints" / "best.pt")
    report = (out_dir / "report.md").read_text()
    assert "| stepwise vs direct |" in report and "Intermediate run `intermediate`" in report and "tasks ['abnormal']" in report
    assert "**Warning**: AUC on valid, which also chose each run's best epoch" in report  # no test split here


def test_a_study_whose_runs_exist_stops_before_training_and_keeps_its_report(tmp_path, capsys):
    """A second `transmed study` into a finished study's folder (a --quick with the full study's --group, say)
    is one line, and the earlier report stays; --quick always writes to {group}-quick."""
    path = ROOT / "configs" / "studies" / "fusion.yaml"
    assert load_study(path, base=DEMO, group="mine", quick=True).group == "mine-quick"
    study = load_study(path, [f"output_dir={tmp_path}"], base=DEMO, group="mine")
    first = [cfg for _, _, cfg in study_configs(study)][0]
    run_dir = tmp_path / first.run_name
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text("seed: 0\n")
    (tmp_path / "mine" / "report.md").write_text("the full study's report\n")
    with pytest.raises(SystemExit) as stopped:
        run_main(lambda: main([str(path), "--base", DEMO, "--group", "mine", f"output_dir={tmp_path}"]))
    assert stopped.value.code != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: study folder {tmp_path / 'mine'} already holds 1 of its {3 * len(study.runs)} runs (first: {run_dir}); "
                   "finish them with train.resume=auto, write elsewhere with --group NAME, or replace them with overwrite=true"]
    assert (tmp_path / "mine" / "report.md").read_text() == "the full study's report\n"
