"""Tests of transmed.evaluation.metrics and transmed.evaluation.plots."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy.stats import norm
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    balanced_accuracy_score,
    f1_score,
    recall_score,
    roc_auc_score,
)

from transmed.core.errors import DataError
from transmed.evaluation import metrics as M
from transmed.evaluation import plots

TASKS = ["mgmt", "idh", "codel"]


def _multilabel(n: int = 200, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = (rng.random((n, 3)) < [0.3, 0.5, 0.2]).astype(int)
    logits = labels * [1.5, 0.5, 3.0] + rng.normal(size=(n, 3))
    probs = np.round(1 / (1 + np.exp(-logits)), 2)  # rounding creates ties
    return probs, labels


def _multiclass(n: int = 200, k: int = 3, seed: int = 2) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, k, n)
    logits = rng.normal(size=(n, k)) + 1.2 * np.eye(k)[labels]
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return probs, labels


def _all_summaries(result: dict):
    for task in result["tasks"].values():
        yield from task.values()
    yield from result["overall"].values()


def _assert_cis_contain_values(result: dict) -> None:
    for summary in _all_summaries(result):
        lo, hi = summary["ci"]
        assert lo <= summary["value"] <= hi


def test_multilabel_metrics_match_sklearn_and_cis_contain_values():
    probs, labels = _multilabel()
    res = M.compute_metrics(probs, labels, TASKS, "multilabel", thresholds={"idh": 0.4})
    assert res["n"] == 200
    assert res["thresholds"] == {"mgmt": 0.5, "idh": 0.4, "codel": 0.5}
    for j, name in enumerate(TASKS):
        y, s, t = labels[:, j], probs[:, j], res["thresholds"][name]
        pred = (s >= t).astype(int)
        task = res["tasks"][name]
        assert task["auc"]["value"] == pytest.approx(roc_auc_score(y, s), abs=1e-12)
        assert task["average_precision"]["value"] == pytest.approx(average_precision_score(y, s), abs=1e-12)
        assert task["accuracy"]["value"] == pytest.approx(accuracy_score(y, pred))
        assert task["balanced_accuracy"]["value"] == pytest.approx(balanced_accuracy_score(y, pred))
        assert task["sensitivity"]["value"] == pytest.approx(recall_score(y, pred))
        assert task["specificity"]["value"] == pytest.approx(recall_score(1 - y, 1 - pred))
        assert task["f1"]["value"] == pytest.approx(f1_score(y, pred))
        assert task["ece"]["value"] == pytest.approx(M.expected_calibration_error(s, y))
    mean_auc = np.mean([roc_auc_score(labels[:, j], probs[:, j]) for j in range(3)])
    assert res["overall"]["auc"]["value"] == pytest.approx(mean_auc)
    _assert_cis_contain_values(res)
    lo, hi = res["tasks"]["codel"]["auc"]["ci"]
    assert 0.5 < lo < hi < 1 and hi - lo < 0.3  # a real, informative interval


def test_multiclass_overall_matches_sklearn():
    probs, labels = _multiclass()
    names = ["a", "b", "c"]
    res = M.compute_metrics(probs, labels, names, "multiclass")
    pred = probs.argmax(axis=1)
    overall = res["overall"]
    assert set(overall) == {
        "auc",
        "sensitivity",
        "specificity",
        "f1",
        "auc_macro",
        "auc_micro",
        "accuracy",
        "balanced_accuracy",
        "f1_macro",
    }
    assert overall["auc"] == overall["auc_macro"] and overall["f1"] == overall["f1_macro"]
    assert overall["sensitivity"]["value"] == pytest.approx(recall_score(labels, pred, average="macro"))
    specificities = [recall_score(labels != k, pred != k) for k in range(3)]
    assert overall["specificity"]["value"] == pytest.approx(np.mean(specificities))
    assert overall["auc_macro"]["value"] == pytest.approx(roc_auc_score(labels, probs, multi_class="ovr", average="macro"), abs=1e-12)
    assert overall["auc_micro"]["value"] == pytest.approx(roc_auc_score(np.eye(3)[labels], probs, average="micro"), abs=1e-12)
    assert overall["accuracy"]["value"] == pytest.approx(accuracy_score(labels, pred))
    assert overall["balanced_accuracy"]["value"] == pytest.approx(balanced_accuracy_score(labels, pred))
    assert overall["f1_macro"]["value"] == pytest.approx(f1_score(labels, pred, average="macro"))
    # one-vs-rest thresholded metrics use the argmax prediction
    recalls = recall_score(labels, pred, average=None)
    for k, name in enumerate(names):
        assert res["tasks"][name]["sensitivity"]["value"] == pytest.approx(recalls[k])
        assert res["tasks"][name]["auc"]["value"] == pytest.approx(roc_auc_score(labels == k, probs[:, k]))
    assert res["thresholds"] == {}
    _assert_cis_contain_values(res)


def test_sensitivity_specificity_hand_computed():
    probs = np.array([0.9, 0.6, 0.3, 0.7, 0.2, 0.1, 0.4, 0.05])[:, None]
    labels = np.array([1, 1, 1, 0, 0, 0, 0, 0])[:, None]
    task = M.compute_metrics(probs, labels, ["t"], "multilabel", n_bootstrap=50)["tasks"]["t"]
    # threshold 0.5: TP=2 (0.9, 0.6), FN=1, FP=1 (0.7), TN=4
    assert task["sensitivity"]["value"] == pytest.approx(2 / 3)
    assert task["specificity"]["value"] == pytest.approx(4 / 5)
    assert task["accuracy"]["value"] == pytest.approx(6 / 8)
    assert task["balanced_accuracy"]["value"] == pytest.approx((2 / 3 + 4 / 5) / 2)
    assert task["f1"]["value"] == pytest.approx(2 * 2 / (2 * 2 + 1 + 1))
    # AUC: 15 positive-negative pairs, 12 ranked correctly (0.6 < 0.7, 0.3 < 0.7, 0.3 < 0.4 are not)
    assert task["auc"]["value"] == pytest.approx(12 / 15)
    # threshold 0.25: TP=3, FP=2 (0.7, 0.4), TN=3
    task = M.compute_metrics(probs, labels, ["t"], "multilabel", thresholds={"t": 0.25}, n_bootstrap=50)["tasks"]["t"]
    assert task["sensitivity"]["value"] == pytest.approx(1.0)
    assert task["specificity"]["value"] == pytest.approx(3 / 5)


def test_vectorised_bootstrap_engine_equals_sklearn_on_resampled_data():
    probs, labels = _multilabel(n=120, seed=5)
    s, y = probs[:, 0], labels[:, 0].astype(bool)
    counts = np.random.default_rng(0).integers(0, 4, size=(5, s.size)).astype(float)
    auc, ap = M._ranking_metrics(s, y, np.vstack([np.ones(s.size), counts]))
    assert auc[0] == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    assert ap[0] == pytest.approx(average_precision_score(y, s), abs=1e-12)
    for r, w in enumerate(counts, start=1):  # integer weights == repeating each sample w times
        idx = np.repeat(np.arange(s.size), w.astype(int))
        assert auc[r] == pytest.approx(roc_auc_score(y[idx], s[idx]), abs=1e-12)
        assert ap[r] == pytest.approx(average_precision_score(y[idx], s[idx]), abs=1e-12)
        assert M._ece(s, y, w[None], 10)[0] == pytest.approx(M.expected_calibration_error(s[idx], y[idx]))


def test_stratified_bootstrap_keeps_class_sizes():
    strata = np.array([0] * 7 + [1] * 3 + [2] * 10)
    w = M._stratified_weights(strata, 100, np.random.default_rng(0))
    for value in (0, 1, 2):
        np.testing.assert_array_equal(w[:, strata == value].sum(axis=1), (strata == value).sum())


def test_overall_interval_keeps_the_covariance_of_tasks_that_share_studies():
    """Three copies of one task: their mean is that task, so its interval must be the task's own
    (resampling each task independently made it about sqrt(3) times too narrow)."""
    rng = np.random.default_rng(0)
    y = (rng.random(80) < 0.4).astype(int)
    p = np.clip(0.3 * y + rng.normal(0.35, 0.2, 80), 0, 1)
    res = M.compute_metrics(np.stack([p] * 3, 1), np.stack([y] * 3, 1), ["a", "b", "c"], "multilabel", n_bootstrap=300, seed=0)
    assert res["overall"]["auc"]["ci"] == pytest.approx(res["tasks"]["a"]["auc"]["ci"])
    weights = M._stratified_weights(np.array([0, 1, 1, 3, 3, 3, 2]), 50, rng)  # label tuples as stratum codes
    task0 = np.array([0, 1, 1, 1, 1, 1, 0]).astype(bool)  # code & 1
    np.testing.assert_array_equal(weights[:, task0].sum(axis=1), task0.sum())  # each task keeps its positive count


def test_bootstrap_is_deterministic_for_a_seed():
    probs, labels = _multilabel()
    a = M.compute_metrics(probs, labels, TASKS, "multilabel", n_bootstrap=200, seed=3)
    b = M.compute_metrics(probs, labels, TASKS, "multilabel", n_bootstrap=200, seed=3)
    c = M.compute_metrics(probs, labels, TASKS, "multilabel", n_bootstrap=200, seed=4)
    assert a == b
    assert a["tasks"]["mgmt"]["auc"]["ci"] != c["tasks"]["mgmt"]["auc"]["ci"]
    assert a["tasks"]["mgmt"]["auc"]["value"] == c["tasks"]["mgmt"]["auc"]["value"]


def test_single_class_task_gives_nan_auc_with_warning():
    probs, labels = _multilabel()
    labels[:, 1] = 0
    with pytest.warns(UserWarning, match="idh"):
        res = M.compute_metrics(probs, labels, TASKS, "multilabel", n_bootstrap=100)
    idh = res["tasks"]["idh"]
    assert np.isnan(idh["auc"]["value"]) and np.isnan(idh["average_precision"]["value"])
    assert idh["specificity"]["value"] == pytest.approx(np.mean(probs[:, 1] < 0.5))
    mean_auc = np.mean([roc_auc_score(labels[:, j], probs[:, j]) for j in (0, 2)])
    assert res["overall"]["auc"]["value"] == pytest.approx(mean_auc)  # NaN task skipped
    out = M.to_jsonable(res)
    assert out["tasks"]["idh"]["auc"] == {"value": None, "ci": [None, None]}
    json.dumps(out, allow_nan=False)


def test_to_jsonable_converts_numpy_and_nan():
    obj = {"a": np.float32(0.5), "b": np.array([1, 2]), "c": (np.nan, np.int64(3)), np.int64(4): [np.inf]}
    assert M.to_jsonable(obj) == {"a": 0.5, "b": [1, 2], "c": [None, 3], 4: [None]}


def test_expected_calibration_error_hand_computed():
    probs = np.array([0.1, 0.2, 0.8, 0.9])
    labels = np.array([0, 1, 1, 1])
    # bin [0, 0.5): mean prob 0.15, positives 0.5; bin [0.5, 1]: mean 0.85, positives 1.0
    assert M.expected_calibration_error(probs, labels, n_bins=2) == pytest.approx(0.35 * 0.5 + 0.15 * 0.5)
    assert M.expected_calibration_error(np.array([0.0, 1.0, 1.0]), np.array([0, 1, 1])) == 0.0
    mean_prob, frac_pos, count = M.calibration_curve(probs, labels, n_bins=2)
    np.testing.assert_allclose(mean_prob, [0.15, 0.85])
    np.testing.assert_allclose(frac_pos, [0.5, 1.0])
    np.testing.assert_array_equal(count, [2, 2])


def _delong_brute_force(y: np.ndarray, p1: np.ndarray, p2: np.ndarray) -> tuple[float, float]:
    """Textbook DeLong (1988) with explicit pairwise kernels; returns (diff, variance of diff)."""
    comps = []
    for p in (p1, p2):
        x, z = p[y == 1][:, None], p[y == 0][None, :]
        psi = (x > z) + 0.5 * (x == z)
        comps.append((psi.mean(), psi.mean(axis=1), psi.mean(axis=0)))
    s10 = np.cov(np.vstack([comps[0][1], comps[1][1]]))
    s01 = np.cov(np.vstack([comps[0][2], comps[1][2]]))
    cov = s10 / (y == 1).sum() + s01 / (y == 0).sum()
    return comps[0][0] - comps[1][0], cov[0, 0] + cov[1, 1] - 2 * cov[0, 1]


def test_holm_adjustment_hand_computed():
    # sorted 0.01, 0.03, 0.04 -> x3, x2, x1 = 0.03, 0.06, 0.04 -> running max 0.03, 0.06, 0.06; input order kept
    assert M.holm_adjust([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert M.holm_adjust([0.5, 0.6]) == pytest.approx([1.0, 1.0]) and M.holm_adjust([]) == []


def test_delong_test():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 150)
    strong = y + rng.normal(scale=0.5, size=150)
    weak = y + rng.normal(scale=3.0, size=150)

    same = M.delong_test(y, strong, strong)
    assert same["diff"] == 0 and same["z"] == 0 and same["p_value"] == 1

    better = M.delong_test(y, strong, weak)
    assert better["auc1"] == pytest.approx(roc_auc_score(y, strong))
    assert better["auc2"] == pytest.approx(roc_auc_score(y, weak))
    assert better["diff"] > 0.15 and better["z"] > 0 and better["p_value"] < 1e-4

    reverse = M.delong_test(y, weak, strong)
    assert reverse["z"] == pytest.approx(-better["z"]) and reverse["p_value"] == pytest.approx(better["p_value"])

    tied1, tied2 = np.round(strong, 0), np.round(weak, 0)  # heavy ties
    diff, var = _delong_brute_force(y, tied1, tied2)
    res = M.delong_test(y, tied1, tied2)
    assert res["diff"] == pytest.approx(diff) and res["z"] == pytest.approx(diff / np.sqrt(var))


def test_youden_threshold_separates_classes():
    rng = np.random.default_rng(0)
    labels = np.r_[np.zeros(20), np.ones(20)].astype(int)
    probs = np.r_[rng.uniform(0.05, 0.35, 20), rng.uniform(0.6, 0.95, 20)]
    t = M.youden_thresholds(probs[:, None], labels[:, None], ["t"], "multilabel")["t"]
    assert probs[labels == 0].max() < t <= probs[labels == 1].min()
    task = M.compute_metrics(probs[:, None], labels[:, None], ["t"], "multilabel", thresholds={"t": t}, n_bootstrap=20)
    assert task["tasks"]["t"]["balanced_accuracy"]["value"] == 1.0

    mc_probs, mc_labels = _multiclass()
    thresholds = M.youden_thresholds(mc_probs, mc_labels, ["a", "b", "c"], "multiclass")
    assert set(thresholds) == {"a", "b", "c"} and all(0 < v < 1 for v in thresholds.values())


def test_invalid_inputs_raise():
    probs, labels = _multilabel(n=20)
    with pytest.raises(ValueError, match="kind"):
        M.compute_metrics(probs, labels, TASKS, "binary")
    with pytest.raises(ValueError, match="names"):
        M.compute_metrics(probs, labels, TASKS[:2], "multilabel")
    with pytest.raises(ValueError, match="unknown"):
        M.compute_metrics(probs, labels, TASKS, "multilabel", thresholds={"nope": 0.3})
    with pytest.raises(ValueError, match="class indices"):
        M.compute_metrics(probs, np.full(20, 3), TASKS, "multiclass")


@pytest.mark.parametrize("kind", ["multilabel", "multiclass"])
def test_plots_write_png(tmp_path, kind):
    probs, labels = _multilabel(n=80) if kind == "multilabel" else _multiclass(n=80)
    calls = {
        "roc.png": lambda p: plots.plot_roc(probs, labels, TASKS, kind, p, n_bootstrap=20),
        "pr.png": lambda p: plots.plot_pr(probs, labels, TASKS, kind, p),
        "confusion.png": lambda p: plots.plot_confusion(probs, labels, TASKS, kind, p, thresholds={"idh": 0.3}),
        "calibration.png": lambda p: plots.plot_calibration(probs, labels, TASKS, kind, p),
    }
    for filename, call in calls.items():
        call(tmp_path / "figs" / filename)
    for filename in calls:
        data = (tmp_path / "figs" / filename).read_bytes()
        assert data.startswith(b"\x89PNG") and len(data) > 10_000


def test_plots_tolerate_single_class_task(tmp_path):
    probs, labels = _multilabel(n=60)
    labels[:, 2] = 1
    plots.plot_roc(probs, labels, TASKS, "multilabel", tmp_path / "roc.png", n_bootstrap=10)
    plots.plot_pr(probs, labels, TASKS, "multilabel", tmp_path / "pr.png")
    assert (tmp_path / "roc.png").stat().st_size > 0 and (tmp_path / "pr.png").stat().st_size > 0


def _auc_ci_coverage(num_tasks: int, datasets: int = 200, n: int = 80, d: float = 1.0) -> tuple[float, float]:
    """Share of seeded simulated datasets whose 95% interval holds the population AUC, for task 0 and overall.

    Independent tasks, labels Bernoulli(0.5), scores N(0, 1) for negatives and N(d, 1) for positives
    (squashed to [0, 1], which keeps the ranks): the population AUC is Phi(d / sqrt(2)) for every task.
    """
    rng = np.random.default_rng(num_tasks)
    true_auc = norm.cdf(d / np.sqrt(2))
    names = [f"t{i}" for i in range(num_tasks)]
    task_hits = overall_hits = 0
    for r in range(datasets):
        labels = (rng.random((n, num_tasks)) < 0.5).astype(int)
        probs = norm.cdf(rng.normal(size=(n, num_tasks)) + d * labels)
        res = M.compute_metrics(probs, labels, names, "multilabel", n_bootstrap=200, seed=r)
        lo, hi = res["tasks"]["t0"]["auc"]["ci"]
        task_hits += lo <= true_auc <= hi
        lo, hi = res["overall"]["auc"]["ci"]
        overall_hits += lo <= true_auc <= hi
    return task_hits / datasets, overall_hits / datasets


@pytest.mark.parametrize("num_tasks", [1, 3, 10])
def test_bootstrap_interval_coverage_holds_for_many_tasks(num_tasks):
    """Stratifying on the label tuple left most of the 2^K strata with one study, always redrawn as
    itself: the intervals shrank towards the point value as tasks were added (coverage 0.19 at K=10)."""
    task, overall = _auc_ci_coverage(num_tasks)
    assert 0.90 <= task <= 0.98
    assert 0.90 <= overall <= 0.98


def test_many_tasks_do_not_collapse_a_task_interval():
    rng = np.random.default_rng(0)
    n, k = 40, 10
    labels = (rng.uniform(size=(n, k)) < 0.5).astype(int)
    probs = 1 / (1 + np.exp(-(rng.normal(size=(n, k)) + labels)))
    alone = M.compute_metrics(probs[:, :1], labels[:, :1], ["t0"], "multilabel")["tasks"]["t0"]["auc"]["ci"]
    among = M.compute_metrics(probs, labels, [f"t{i}" for i in range(k)], "multilabel")["tasks"]["t0"]["auc"]["ci"]
    assert alone[1] - alone[0] > 0.2
    assert among[1] - among[0] > 0.2  # was [0.6803, 0.6803]


def test_multiclass_bootstrap_keeps_class_sizes():
    """One label per study: multiclass resamples stay stratified on the class."""
    _, labels = _multiclass(n=60)
    weights = M._bootstrap_weights(np.eye(3, dtype=bool)[labels], "multiclass", 50, np.random.default_rng(0))
    for c in range(3):
        np.testing.assert_array_equal(weights[:, labels == c].sum(axis=1), (labels == c).sum())


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_delong_test_rejects_non_finite_scores(bad):
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 30)
    good = rng.random(30)
    broken = good.copy()
    broken[3] = bad
    for p1, p2 in ((broken, good), (good, broken)):
        with pytest.raises(DataError, match="finite"):
            M.delong_test(y, p1, p2)
