import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import tiny_overrides
from sklearn.metrics import roc_auc_score

import transmed
from transmed.core.errors import ResultExistsError, RunExistsError
from transmed.engine import train
from transmed.evaluation.evaluate import evaluate_checkpoint

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def trained_run(mrnet_root, tmp_path_factory):
    from transmed.config import load_config

    out = tmp_path_factory.mktemp("runs")
    return train(load_config(None, tiny_overrides(mrnet_root, out)))


def test_run_writes_contract_files(trained_run):
    run = trained_run
    for name in ("config.yaml", "metrics.jsonl", "summary.json", "checkpoints/best.pt", "checkpoints/last.pt"):
        assert (run / name).is_file(), name
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [line["epoch"] for line in lines] == [1, 2]
    for line in lines:
        assert {"train/loss", "val/loss", "val/auc", "val/auc/abnormal", "val/auc/acl", "val/auc/meniscus", "sec/epoch"} <= set(line)
        tasks = [line[f"val/auc/{t}"] for t in ("abnormal", "acl", "meniscus")]
        assert line["val/auc"] == pytest.approx(np.mean(tasks))
    summary = json.loads((run / "summary.json").read_text())
    assert summary["best"]["val/auc"] == max(line["val/auc"] for line in lines)
    assert summary["last"]["epoch"] == 2 and summary["params"]["trainable"] > 0


def test_checkpoint_is_plain_data_and_round_trips(trained_run):
    ckpt = torch.load(trained_run / "checkpoints" / "best.pt", weights_only=True)
    assert {"model", "config", "epoch", "optimizer", "scheduler", "rng", "label_spec"} <= set(ckpt)
    assert ckpt["config"]["model"]["backbone"] == "test_resnet"
    model = transmed.load_model(trained_run / "checkpoints" / "best.pt")
    assert not model.training
    for k, v in model.state_dict().items():
        assert torch.equal(v, ckpt["model"][k]), k


def test_evaluate_matches_sklearn_and_refuses_overwrite(trained_run, tmp_path):
    out = evaluate_checkpoint(trained_run / "checkpoints" / "best.pt", "valid", tmp_path / "eval", n_bootstrap=50)
    metrics = json.loads((out / "metrics.json").read_text())
    preds = pd.read_csv(out / "predictions.csv", dtype={"id": str})
    assert len(preds) == metrics["n"] == 12
    for task in ("abnormal", "acl", "meniscus"):
        expected = roc_auc_score(preds[f"label/{task}"], preds[f"prob/{task}"])
        assert metrics["tasks"][task]["auc"]["value"] == pytest.approx(expected, abs=1e-9)
        lo, hi = metrics["tasks"][task]["auc"]["ci"]
        assert lo <= metrics["tasks"][task]["auc"]["value"] <= hi
    best = json.loads((trained_run / "summary.json").read_text())["best"]
    assert metrics["overall"]["auc"]["value"] == pytest.approx(best["val/auc"], abs=1e-5)
    for plot in ("roc.png", "pr.png", "confusion.png", "calibration.png"):
        assert (out / plot).stat().st_size > 0
    with pytest.raises(ResultExistsError):
        evaluate_checkpoint(trained_run / "checkpoints" / "best.pt", "valid", tmp_path / "eval", n_bootstrap=50)


def test_existing_run_is_never_overwritten(trained_run, mrnet_root):
    from transmed.config import load_config

    before = (trained_run / "metrics.jsonl").read_text()
    cfg = load_config(None, tiny_overrides(mrnet_root, trained_run.parent, run_name=trained_run.name))
    with pytest.raises(RunExistsError, match="train.resume=auto"):
        train(cfg)
    assert (trained_run / "metrics.jsonl").read_text() == before


def test_train_and_evaluate_commands(mrnet_root, tmp_path):
    args = tiny_overrides(mrnet_root, tmp_path, **{"train.epochs": "1", "wandb.mode": "offline"})
    result = subprocess.run(
        [sys.executable, "train.py", "--config", "configs/demo.yaml", *args], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-2000:]
    run = tmp_path / "tiny"
    assert list((run / "wandb").glob("offline-run-*")), "W&B offline files belong in the run dir"
    result = subprocess.run(
        [sys.executable, "evaluate.py", "--checkpoint", str(run / "checkpoints/best.pt"), "--bootstrap", "20"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert (run / "eval-valid" / "metrics.json").is_file()


def test_loss_weights_come_from_training_prevalence():
    from transmed.data import LabelSpec
    from transmed.engine.losses import build_loss

    labels = np.array([[1, 0], [0, 0], [0, 1], [0, 0]])  # task a: 1 of 4 positive, task b: 1 of 4
    loss = build_loss(LabelSpec("multilabel", ("a", "b")), labels)
    assert loss.pos_weight.tolist() == [3.0, 3.0]
    assert build_loss(LabelSpec("multilabel", ("a", "b")), labels, balanced=False).pos_weight is None
    classes = LabelSpec("multiclass", ("x", "y", "z"))
    weights = build_loss(classes, np.array([0, 0, 0, 1, 1, 2])).weight  # counts 3, 2, 1
    assert weights.tolist() == pytest.approx([6 / 9, 6 / 6, 6 / 3])
    with pytest.raises(ValueError, match="task 'b' has 0 positive"):
        build_loss(LabelSpec("multilabel", ("a", "b")), np.array([[1, 0], [0, 0]]))
