"""Every file the project writes gets the mode the umask gives (0644 under umask 022), atomic writes included."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

from conftest import tiny_overrides

ROOT = Path(__file__).resolve().parents[1]

# One process (one torch import) under umask 022: train, evaluate, export, import weights.
SCRIPT = """
import os, sys
os.umask(0o022)
import timm, torch
from transmed.commands import main
out, overrides = sys.argv[1], sys.argv[2:]
main(["train", "--config", "demo.yaml", *overrides])
best = f"{out}/tiny/checkpoints/best.pt"
main(["evaluate", "--checkpoint", best, "--bootstrap", "10"])
for fmt, path in (("safetensors", "model.safetensors"), ("onnx", "model.onnx"), ("hub", "hub")):
    main(["export", "--checkpoint", best, "--format", fmt, "--out", f"{out}/exports/{path}"])
torch.save(timm.create_model("test_efficientnet").state_dict(), f"{out}/state.pth")
main(["weights", "import", f"{out}/state.pth", "--backbone", "test_efficientnet", "--no-verify", "--out", f"{out}/w.safetensors"])
"""


def modes(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): oct(stat.S_IMODE(p.stat().st_mode)) for p in sorted(folder.rglob("*")) if p.is_file()}


def test_written_files_get_the_umask_mode(mrnet_root, tmp_path):
    out = tmp_path / "out"
    overrides = tiny_overrides(mrnet_root, out, **{"train.epochs": "1", "model.stem_stage": "1"})
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(out), *overrides], cwd=ROOT, capture_output=True, text=True, timeout=600, check=False
    )
    assert result.returncode == 0, result.stderr[-3000:]
    found = modes(out)
    for name in (
        "tiny/checkpoints/best.pt",
        "tiny/checkpoints/last.pt",
        "tiny/summary.json",
        "tiny/metrics.jsonl",
        "tiny/config.yaml",
        "tiny/eval-valid/metrics.json",
        "exports/model.safetensors",
        "exports/model.onnx",
        "exports/hub/model.safetensors",
        "w.safetensors",  # transmed weights import
    ):
        assert name in found, sorted(found)
    wrong = {name: mode for name, mode in found.items() if mode != "0o644"}
    assert not wrong, wrong
    assert not [p for p in out.rglob("*.tmp")], "a temporary file was left behind"


def test_atomic_writes_follow_any_umask(tmp_path):
    """Not 0644 hard-coded: the mode a plain `open` would give under each umask (read once per process)."""
    for mask, mode in ((0o027, 0o640), (0o002, 0o664), (0o077, 0o600)):
        code = f"import os; os.umask({mask}); from transmed.core.io import write_json; write_json({str(tmp_path / oct(mask))!r}, {{}})"
        subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=60)
        assert stat.S_IMODE(os.stat(tmp_path / oct(mask)).st_mode) == mode, oct(mask)
