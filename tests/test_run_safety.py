"""Runs that survive: kill and resume, determinism, safe checkpoints, non-finite loss, bad output dirs."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import tiny_overrides

from transmed.config import load_config
from transmed.core.checkpoint import export_safetensors, load_checkpoint
from transmed.core.errors import NonFiniteLossError, RunDirError, UnsafeCheckpointError
from transmed.engine import train

ROOT = Path(__file__).resolve().parents[1]


def _metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def _without_timing(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if k != "sec/epoch"} for row in rows]


def _train_cmd(root, out, **extra) -> list[str]:
    return [sys.executable, "train.py", "--config", "configs/demo.yaml", *tiny_overrides(root, out, **extra)]


def test_kill_and_resume_equals_uninterrupted(mrnet_root, tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    extra = {"train.epochs": "3", "run_name": "r"}
    full = subprocess.run(
        _train_cmd(mrnet_root, tmp_path / "full", **extra), cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert full.returncode == 0, full.stderr[-2000:]

    proc = subprocess.Popen(
        _train_cmd(mrnet_root, tmp_path / "killed", **extra), cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    last = tmp_path / "killed" / "r" / "checkpoints" / "last.pt"
    deadline = time.time() + 240
    while not last.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    time.sleep(0.5)  # into epoch 2
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert last.exists()
    killed_epochs = [row["epoch"] for row in _metrics(tmp_path / "killed" / "r")]
    assert killed_epochs and killed_epochs[-1] < 3, "the kill came too late to test resuming"

    resumed = subprocess.run(
        _train_cmd(mrnet_root, tmp_path / "killed", **extra, **{"train.resume": "auto"}),
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    got, want = _metrics(tmp_path / "killed" / "r"), _metrics(tmp_path / "full" / "r")
    assert [row["epoch"] for row in got] == [1, 2, 3]
    for a, b in zip(got, want):
        assert a["val/loss"] == pytest.approx(b["val/loss"], abs=1e-5)
        assert a["val/auc"] == pytest.approx(b["val/auc"], abs=1e-5)
    assert json.loads((tmp_path / "killed" / "r" / "summary.json").read_text())["last"]["epoch"] == 3


def test_two_seeded_runs_are_identical(mrnet_root, tmp_path):
    runs = [train(load_config(None, tiny_overrides(mrnet_root, tmp_path / name))) for name in ("a", "b")]
    assert _without_timing(_metrics(runs[0])) == _without_timing(_metrics(runs[1]))


class _RunsCode:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_checkpoint_is_refused_without_running(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"format": "transmed-checkpoint/1", "payload": _RunsCode(str(marker))}, path)
    with pytest.raises(UnsafeCheckpointError, match="refusing to load"):
        load_checkpoint(path)
    assert not marker.exists()
    result = subprocess.run(
        [sys.executable, "evaluate.py", "--checkpoint", str(path)], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 1 and "refusing to load" in result.stderr and not marker.exists()


def test_truncated_checkpoint_is_a_clear_error(tmp_path):
    good = tmp_path / "good.pt"
    torch.save({"format": "transmed-checkpoint/1", "model": {"w": torch.ones(1000)}}, good)
    bad = tmp_path / "bad.pt"
    bad.write_bytes(good.read_bytes()[:500])
    with pytest.raises(RuntimeError, match="truncated or not a torch file"):
        load_checkpoint(bad)


def test_non_finite_loss_names_epoch_step_and_studies(mrnet_root, tmp_path, monkeypatch):
    import transmed.engine.trainer as trainer

    real = trainer.build_loss

    def poisoned(spec, labels, *args):
        loss = real(spec, labels, *args)
        calls = {"n": 0}

        def forward(logits, y):
            calls["n"] += 1
            value = torch.nn.BCEWithLogitsLoss.forward(loss, logits, y)
            return value * float("nan") if calls["n"] == 8 else value  # epoch 1: 6 steps + 1 validation call; the 8th is epoch 2, step 0

        loss.forward = forward
        return loss

    monkeypatch.setattr(trainer, "build_loss", poisoned)
    cfg = load_config(None, tiny_overrides(mrnet_root, tmp_path))
    with pytest.raises(NonFiniteLossError, match=r"epoch 2, step 0, studies \['\d{4}'"):
        train(cfg)
    kept = load_checkpoint(tmp_path / "tiny" / "checkpoints" / "last.pt")
    assert kept["epoch"] == 1 and all(torch.isfinite(v).all() for v in kept["model"].values() if v.is_floating_point())


def test_unwritable_output_dir_fails_before_training(mrnet_root, tmp_path):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    with pytest.raises(RunDirError, match="cannot write to the run directory"):
        train(load_config(None, tiny_overrides(mrnet_root, blocker)))


def test_overwrite_true_replaces_a_run(mrnet_root, tmp_path):
    run = train(load_config(None, tiny_overrides(mrnet_root, tmp_path, **{"train.epochs": "1"})))
    (run / "marker").write_text("old")
    train(load_config(None, [*tiny_overrides(mrnet_root, tmp_path, **{"train.epochs": "1"}), "overwrite=true"]))
    assert not (run / "marker").exists() and len(_metrics(run)) == 1


def test_safetensors_export(mrnet_root, tmp_path):
    from safetensors import safe_open

    run = train(load_config(None, tiny_overrides(mrnet_root, tmp_path, **{"train.epochs": "1"})))
    out = export_safetensors(run / "checkpoints" / "best.pt", tmp_path / "w.safetensors")
    state = load_checkpoint(run / "checkpoints" / "best.pt")["model"]
    with safe_open(str(out), "pt") as f:
        assert json.loads(f.metadata()["config"])["model"]["backbone"] == "test_resnet"
        for key in state:
            assert torch.equal(f.get_tensor(key), state[key])


def test_ctrl_c_exits_130_with_the_resume_command_and_the_resumed_run_ends_with_its_best(mrnet_root, tmp_path):
    """Ctrl-C (SIGINT to the process group, as a terminal sends it) once epoch 1 is reported: exit 130, one line that
    gives the resume command, no traceback; that command finishes the run, whose last line names the best checkpoint."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    cmd = _train_cmd(mrnet_root, tmp_path, **{"train.epochs": "3", "run_name": "r"})
    proc = subprocess.Popen(
        cmd,
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        # as from a terminal: a shell's background job (`cmd &`) inherits SIGINT ignored, and Python then keeps it so
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    for line in proc.stdout:
        if line.startswith("epoch 1:"):
            os.killpg(proc.pid, signal.SIGINT)
            break
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if "interrupted" in line or "resume" in line]
    assert len(lines) == 1 and lines[0] == err.strip().splitlines()[-1], err
    run = tmp_path / "r"
    resume = f"transmed train --config {run / 'config.yaml'} train.resume=auto"
    assert lines[0].startswith("interrupted in epoch ") and lines[0].endswith(f"; resume with: {resume}"), lines[0]

    transmed = Path(sys.executable).with_name("transmed")  # the console script of this environment
    resumed = subprocess.run([str(transmed), *resume.split()[1:]], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert [row["epoch"] for row in _metrics(run)] == [1, 2, 3]
    best = json.loads((run / "summary.json").read_text())["best"]
    last_line = resumed.stdout.strip().splitlines()[-1]
    assert last_line == f"best val/auc {best['val/auc']:.4f} at epoch {best['epoch']}: {run / 'checkpoints' / 'best.pt'}"
