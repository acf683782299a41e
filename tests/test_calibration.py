"""Temperature scaling (train.calibrate): fitted at the end of training, stored in the checkpoint, used by
evaluate, predict and the ONNX export; ECE not worse on validation; AUC unchanged."""

from __future__ import annotations

import json
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import tiny_overrides
from sklearn.metrics import roc_auc_score

from transmed.config import load_config
from transmed.core.checkpoint import load_checkpoint, save_checkpoint
from transmed.core.errors import CheckpointError
from transmed.core.labels import LabelSpec
from transmed.deploy import export_checkpoint
from transmed.deploy.describe import describe, label_spec_of
from transmed.deploy.onnx_model import load_onnx
from transmed.engine import train
from transmed.engine.calibration import T_RANGE, ece, fit_temperature
from transmed.evaluation.evaluate import evaluate_checkpoint
from transmed.evaluation.metrics import compute_metrics, expected_calibration_error
from transmed.evaluation.prediction import predict_loaded, predict_study

TASKS = ("abnormal", "acl", "meniscus")


@pytest.fixture(scope="module")
def runs(mrnet_root, tmp_path_factory) -> dict[str, Path]:
    """Two tiny runs: calibrated (the default) and `train.calibrate=false`."""
    out = tmp_path_factory.mktemp("runs")
    fast = {"model.stem_stage": "1", "model.slice_stride": "1"}  # fewer operators for the ONNX export
    calibrated = train(load_config(None, tiny_overrides(mrnet_root, out, run_name="cal", **fast)))
    plain = train(
        load_config(None, tiny_overrides(mrnet_root, out, run_name="plain", **fast, **{"train.epochs": "1", "train.calibrate": "false"}))
    )
    return {"cal": calibrated, "plain": plain}


@pytest.fixture(scope="module")
def evaluated(runs, tmp_path_factory) -> Path:
    return evaluate_checkpoint(runs["cal"] / "checkpoints" / "best.pt", "valid", tmp_path_factory.mktemp("eval") / "cal", n_bootstrap=20)


def test_temperature_is_in_the_checkpoints_and_the_summary(runs):
    best = torch.load(runs["cal"] / "checkpoints" / "best.pt", weights_only=True)
    temperature = best["label_spec"]["temperature"]
    assert len(temperature) == len(TASKS) and all(T_RANGE[0] <= t <= T_RANGE[1] for t in temperature)
    assert temperature != [1.0] * len(TASKS)  # the tiny run is miscalibrated enough for a fit to be kept
    summary = json.loads((runs["cal"] / "summary.json").read_text())
    assert summary["calibration"]["enabled"] and summary["calibration"]["temperature"] == temperature
    assert summary["calibration"]["nll"]["after"] <= summary["calibration"]["nll"]["before"] + 1e-12
    last = torch.load(runs["cal"] / "checkpoints" / "last.pt", weights_only=True)
    assert len(last["label_spec"]["temperature"]) == len(TASKS)
    assert {"optimizer", "scheduler", "rng", "model"} <= set(best)  # the rewrite kept the rest


def test_calibrate_false_gives_temperature_one(runs):
    ckpt = load_checkpoint(runs["plain"] / "checkpoints" / "best.pt")
    assert "temperature" not in ckpt["label_spec"]
    assert json.loads((runs["plain"] / "summary.json").read_text())["calibration"] == {"enabled": False, "temperature": [1.0] * 3}
    spec = LabelSpec.from_dict(ckpt["label_spec"])
    cfg = load_config(base=ckpt["config"])
    assert describe(cfg, spec)["temperature"] == [1.0, 1.0, 1.0]
    logits = torch.randn(5, 3)
    assert torch.equal(spec.probabilities(logits), torch.sigmoid(logits))


def test_validation_ece_after_is_not_above_before(runs, evaluated):
    summary = json.loads((runs["cal"] / "summary.json").read_text())["calibration"]
    assert summary["ece"]["after"] <= summary["ece"]["before"] + 1e-9
    metrics = json.loads((evaluated / "metrics.json").read_text())
    assert metrics["temperature"] == summary["temperature"]
    for block in (*metrics["tasks"].values(), metrics["overall"]):
        assert block["ece"]["value"] <= block["ece_uncalibrated"]["value"] + 1e-6
    assert metrics["overall"]["ece"]["value"] == pytest.approx(summary["ece"]["after"], abs=1e-5)
    assert metrics["overall"]["ece_uncalibrated"]["value"] == pytest.approx(summary["ece"]["before"], abs=1e-5)
    assert "ECE before temperature scaling" in (evaluated / "MODEL_CARD.md").read_text()
    assert (evaluated / "calibration.png").stat().st_size > 0


def test_auc_is_unchanged_by_calibration(runs, evaluated, tmp_path):
    best = runs["cal"] / "checkpoints" / "best.pt"
    ckpt = load_checkpoint(best)
    ckpt["label_spec"].pop("temperature")
    save_checkpoint(tmp_path / "uncalibrated.pt", **{k: v for k, v in ckpt.items() if k != "format"})
    before = json.loads(
        (evaluate_checkpoint(tmp_path / "uncalibrated.pt", "valid", tmp_path / "eval", n_bootstrap=20) / "metrics.json").read_text()
    )
    after = json.loads((evaluated / "metrics.json").read_text())
    for section in (*TASKS, "overall"):
        old = before["overall"] if section == "overall" else before["tasks"][section]
        new = after["overall"] if section == "overall" else after["tasks"][section]
        for metric in ("auc", "average_precision"):
            assert abs(new[metric]["value"] - old[metric]["value"]) <= 1e-9, (section, metric)
            assert np.allclose(new[metric]["ci"], old[metric]["ci"], rtol=0, atol=1e-9)
    frame = pd.read_csv(evaluated / "predictions.csv", dtype={"id": str})
    for task in TASKS:  # the calibrated probabilities rank the studies as the metrics say (a monotone map per task)
        assert abs(roc_auc_score(frame[f"label/{task}"], frame[f"prob/{task}"]) - after["tasks"][task]["auc"]["value"]) <= 1e-9


def test_predict_evaluate_and_onnx_give_the_same_calibrated_probabilities(runs, evaluated, mrnet_root, tmp_path):
    best = runs["cal"] / "checkpoints" / "best.pt"
    frame = pd.read_csv(evaluated / "predictions.csv", dtype={"id": str}).set_index("id")
    onnx_file = tmp_path / "model.onnx"
    export_checkpoint(best, "onnx", onnx_file, check=False)
    model, cfg, spec = load_onnx(onnx_file)
    temperature = torch.load(best, weights_only=True)["label_spec"]["temperature"]
    assert spec.temperature == pytest.approx(tuple(temperature), abs=0)
    worst = 0.0
    for sid in ("0024", "0030"):
        files = {plane: mrnet_root / "valid" / plane / f"{sid}.npy" for plane in ("sagittal", "coronal", "axial")}
        from_checkpoint = predict_study(best, files)["probabilities"]
        from_onnx = predict_loaded(model, cfg, spec, files)["probabilities"]
        for task in TASKS:
            from_evaluate = frame.loc[sid, f"prob/{task}"]
            worst = max(worst, abs(from_checkpoint[task] - from_evaluate), abs(from_onnx[task] - from_checkpoint[task]))
    assert worst <= 1e-5, worst


def test_fit_recovers_a_known_temperature_and_keeps_decisions():
    rng = np.random.default_rng(0)
    z = rng.normal(0, 2, size=(4000, 2))
    labels = (rng.random(z.shape) < 1 / (1 + np.exp(-z))).astype(int)  # calibrated at logits z
    spec = LabelSpec("multilabel", ("a", "b"))
    temperature, report = fit_temperature(z * np.array([3.0, 0.5]), labels, spec)  # over- and under-confident logits
    assert temperature == pytest.approx((3.0, 0.5), rel=0.1)
    assert report["nll"]["after"] < report["nll"]["before"] and report["ece"]["after"] <= report["ece"]["before"]
    logits = torch.from_numpy(z * 3.0)
    calibrated = replace(spec, temperature=temperature).probabilities(logits)
    assert torch.equal(calibrated >= 0.5, spec.probabilities(logits) >= 0.5)

    classes = LabelSpec("multiclass", ("x", "y", "z"))
    zc = rng.normal(0, 2, size=(3000, 3))
    probs = np.exp(zc) / np.exp(zc).sum(axis=1, keepdims=True)
    yc = np.array([rng.choice(3, p=p) for p in probs])
    (t,), _ = fit_temperature(zc / 2.5, yc, classes)  # underconfident by 2.5
    assert t == pytest.approx(0.4, rel=0.1)


def test_one_temperature_over_classes_can_reorder_a_class_so_auc_uses_the_unscaled_ranking():
    """Why compute_metrics ranks by the uncalibrated probabilities: measured on random multiclass logits."""
    rng = np.random.default_rng(1)
    logits = torch.from_numpy(rng.normal(0, 2, size=(300, 4)))
    labels = rng.integers(0, 4, 300)
    spec = LabelSpec("multiclass", tuple("abcd"))
    raw = spec.probabilities(logits).numpy()
    scaled = LabelSpec("multiclass", tuple("abcd"), (0.3,)).probabilities(logits).numpy()
    shift = max(abs(roc_auc_score(labels == k, scaled[:, k]) - roc_auc_score(labels == k, raw[:, k])) for k in range(4))
    assert shift > 1e-9  # softmax(z / T) is not a monotone map of softmax(z)_k
    names = list(spec.names)
    plain = compute_metrics(raw, labels, names, "multiclass", n_bootstrap=20)
    calibrated = compute_metrics(scaled, labels, names, "multiclass", n_bootstrap=20, uncalibrated=raw)
    for key in ("auc", "auc_micro"):
        assert calibrated["overall"][key] == plain["overall"][key]
    assert {"ece", "ece_uncalibrated"} <= set(calibrated["overall"])
    assert calibrated["overall"]["ece_uncalibrated"]["value"] == pytest.approx(np.mean([plain["tasks"][n]["ece"]["value"] for n in names]))


def test_engine_ece_is_the_metrics_ece():
    rng = np.random.default_rng(2)
    p, y = rng.random(500), rng.random(500) < 0.3
    assert ece(p, y) == pytest.approx(expected_calibration_error(p, y), abs=1e-12)


def test_one_class_task_keeps_temperature_one_and_bad_temperatures_are_one_line():
    z = np.random.default_rng(3).normal(size=(20, 2))
    labels = np.stack([np.ones(20, int), (z[:, 1] > 0).astype(int)], axis=1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        temperature, _ = fit_temperature(z, labels, LabelSpec("multilabel", ("all", "half")))
    assert temperature[0] == 1.0 and any("'all'" in str(w.message) for w in caught)
    with pytest.raises(CheckpointError, match="expected 2 positive finite values"):
        LabelSpec("multilabel", ("a", "b"), (1.0,))
    with pytest.raises(CheckpointError, match="neither a number nor a list"):
        label_spec_of({"task": "multiclass", "label_names": ["a", "b"], "temperature": "hot"})
    assert label_spec_of({"task": "multilabel", "label_names": ["a", "b"], "temperature": 1.0}).temperature == (1.0, 1.0)


def test_the_bundle_applies_the_checkpoint_temperature(runs, tmp_path):
    """The MONAI bundle's inference.json carries describe()'s temperature and its predict divides by it (per task)."""
    pytest.importorskip("monai")
    from transmed.deploy.bundle_scripts.standalone import predict as bundle_predict
    from transmed.deploy.monai_bundle import inference_config
    from transmed.models.loading import load_trained

    _, cfg, spec, _ = load_trained(runs["cal"] / "checkpoints" / "best.pt", device="cpu")
    assert inference_config(cfg, spec)["temperature"] == list(spec.temperature)
    (tmp_path / "a.npy").touch()
    logits = torch.tensor([[2.0, -1.0, 0.5]])

    class Dataset:  # what the bundle's MONAI Dataset gives predict: `.data` and one item per study
        data = [{"id": "s", **{m: str(tmp_path / "a.npy") for m in cfg.data.modalities}}]

        def __getitem__(self, index: int) -> dict:
            return {"image": torch.zeros(3, 4, 32, 32)}

    (got,) = bundle_predict(
        lambda image: logits,
        Dataset(),
        list(cfg.data.modalities),
        list(spec.names),
        spec.kind,
        list(spec.temperature),
        str(tmp_path / "p.json"),
    )
    expected = spec.probabilities(logits)[0]
    assert max(abs(got["probabilities"][name] - float(p)) for name, p in zip(spec.names, expected)) <= 1e-6
