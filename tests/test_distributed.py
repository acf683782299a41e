"""torchrun with 2 CPU processes (gloo): one metrics line per epoch, AUC over the whole validation set."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import tiny_overrides

from transmed.evaluation.evaluate import evaluate_checkpoint

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(
    shutil.which("torchrun") is None and not Path(sys.executable).with_name("torchrun").exists(), reason="torchrun not installed"
)
def test_torchrun_two_processes_matches_single_process_evaluation(mrnet_root, tmp_path):
    torchrun = str(Path(sys.executable).with_name("torchrun"))
    cmd = [
        torchrun,
        "--standalone",
        "--nproc_per_node=2",
        "train.py",
        "--config",
        "configs/demo.yaml",
        *tiny_overrides(mrnet_root, tmp_path),
    ]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    result = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=400)
    assert result.returncode == 0, result.stderr[-3000:]
    run = tmp_path / "tiny"
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [line["epoch"] for line in lines] == [1, 2]
    best = json.loads((run / "summary.json").read_text())["best"]
    metrics = json.loads(
        (evaluate_checkpoint(run / "checkpoints" / "best.pt", "valid", tmp_path / "eval", n_bootstrap=10) / "metrics.json").read_text()
    )
    assert metrics["n"] == 12
    assert metrics["overall"]["auc"]["value"] == pytest.approx(best["val/auc"], abs=1e-5)


@pytest.mark.skipif(
    shutil.which("torchrun") is None and not Path(sys.executable).with_name("torchrun").exists(), reason="torchrun not installed"
)
def test_torchrun_tri_net_run(tmp_path):
    """`train.semi.method=tri_net` under torchrun: each rank pseudo-labels every unlabelled study and trains on
    its shard of the labelled and pseudo-labelled ones; rank 0 writes one round per epoch after the warm-up."""
    from transmed.data.synthesis import generate_mrnet

    root = generate_mrnet(tmp_path / "knee", num_train=16, num_valid=8, image_size=32, min_slices=4, max_slices=6, seed=2, num_unlabelled=8)
    semi = {
        "data.unlabelled_root": str(root / "unlabelled"),
        "train.semi.method": "tri_net",
        "train.semi.warmup_epochs": "1",
        "train.semi.threshold": "0.5",
    }
    cmd = [str(Path(sys.executable).with_name("torchrun")), "--standalone", "--nproc_per_node=2", "train.py", "--config", "configs/demo.yaml"]
    result = subprocess.run(
        [*cmd, *tiny_overrides(root, tmp_path / "runs", **semi)],
        cwd=ROOT,
        env=dict(os.environ, OMP_NUM_THREADS="1"),
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    run = tmp_path / "runs" / "tiny"
    rounds = [json.loads(line) for line in (run / "semi.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rounds] == [2] and rounds[0]["unlabelled"] == 8 and len(rounds[0]["per_classifier"]) == 3
    assert [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()] == [1, 2]
