"""The MONAI bundle runs without transmed: `python -m monai.bundle run` in a subprocess where `import
transmed` (and timm) fail, on NIfTI studies, gives `transmed predict`'s probabilities."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from conftest import tiny_nifti_overrides

from transmed.config import load_config, to_dict
from transmed.core.checkpoint import save_checkpoint
from transmed.core.errors import StudyError
from transmed.data import generate_nifti, label_spec
from transmed.deploy import export_checkpoint
from transmed.evaluation.prediction import predict_study
from transmed.models import build_model

pytest.importorskip("fire")  # MONAI's bundle command line needs it (the `export` extra installs it)

HIDDEN = ("transmed", "timm", "einops", "omegaconf")
BLOCKER = f'''
import sys
from importlib.abc import MetaPathFinder

class Hide(MetaPathFinder):
    """Makes the packages a standalone bundle must not need unimportable."""
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {HIDDEN!r}:
            raise ModuleNotFoundError(f"{{name}} is hidden from this bundle test")
        return None

sys.meta_path.insert(0, Hide())
'''


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> tuple[Path, Path]:
    """A checkpoint of an untrained tiny NIfTI model (T1, T2) and its root of studies."""
    tmp = tmp_path_factory.mktemp("standalone")
    root = generate_nifti(tmp / "parotid", num_studies=4, seed=7)
    cfg = load_config(
        None, tiny_nifti_overrides(root, tmp, **{"model.stem_stage": "1", "model.slice_stride": "1", "data.modalities": "[T1,T2]"})
    )
    spec = label_spec(cfg)
    torch.manual_seed(0)
    model = build_model(cfg, spec.num_outputs, pretrained=False)
    path = tmp / "runs" / "checkpoints" / "best.pt"
    save_checkpoint(path, model=model.state_dict(), config=to_dict(cfg), label_spec=spec.to_dict(), epoch=1)
    return path, root


@pytest.fixture(scope="module")
def bundle(study, tmp_path_factory) -> Path:
    checkpoint, _ = study
    out = tmp_path_factory.mktemp("export") / "bundle"
    report = export_checkpoint(checkpoint, "monai-bundle", out)
    assert report.max_abs_diff <= 1e-4
    return out


@pytest.fixture(scope="module")
def hidden_env(tmp_path_factory) -> dict:
    folder = tmp_path_factory.mktemp("hide")
    (folder / "sitecustomize.py").write_text(BLOCKER)
    return {**os.environ, "PYTHONPATH": str(folder), "PYTHONWARNINGS": "ignore"}


def run_python(args: list[str], cwd: Path, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def bundle_run(bundle: Path, env: dict, files: dict[str, Path], out: Path) -> subprocess.CompletedProcess:
    studies = [arg for name, path in files.items() for arg in (f"--study#{name}", str(path))]
    args = ["-m", "monai.bundle", "run", "--config_file", "configs/inference.json", *studies, "--output_file", str(out)]
    return run_python(args, bundle, env)


def test_bundle_runs_without_transmed_and_equals_predict(study, bundle, hidden_env, tmp_path):
    checkpoint, root = study
    for package in ("transmed", "timm"):
        hidden = run_python(["-c", f"import {package}"], bundle, hidden_env)
        assert hidden.returncode != 0 and f"{package} is hidden" in hidden.stderr
    assert not (bundle / "transmed").exists() and not any(bundle.rglob("*.pt"))  # weights only inside the program

    for pid in ("P001",):
        files = {"T1": root / pid / "T1.nii.gz", "T2": root / pid / "T2.nii.gz"}
        out = tmp_path / f"{pid}.json"
        done = bundle_run(bundle, hidden_env, files, out)
        assert done.returncode == 0, done.stderr[-3000:]
        (got,) = json.loads(out.read_text())
        expected = predict_study(checkpoint, {"T2": files["T2"], "T1": files["T1"]})  # named, in another order
        assert got["id"] == expected["id"] == pid
        assert got["inputs"] == expected["inputs"] == {k: str(v) for k, v in files.items()}
        assert got["probabilities"].keys() == expected["probabilities"].keys()
        diff = max(abs(got["probabilities"][k] - expected["probabilities"][k]) for k in got["probabilities"])
        assert diff <= 1e-4, diff


def test_bundle_verification_passes_offline_from_the_shell(bundle, hidden_env):
    from monai.bundle import verify_metadata

    from transmed.deploy.monai_bundle import SCHEMA_FILE, SCHEMA_MD5

    meta, config = "configs/metadata.json", "configs/inference.json"
    schema = bundle / "docs" / SCHEMA_FILE.name  # the bundle's own copy: no download, no transmed
    verify_metadata(meta_file=str(bundle / meta), filepath=str(schema), hash_val=SCHEMA_MD5)
    env = {**hidden_env, "HTTPS_PROXY": "http://127.0.0.1:9", "HTTP_PROXY": "http://127.0.0.1:9"}  # no network either
    done = run_python(["-m", "monai.bundle", "verify_net_in_out", "network_def", "--meta_file", meta, "--config_file", config], bundle, env)
    assert done.returncode == 0, done.stderr[-2000:]


def two_slices(source: Path, out: Path) -> Path:
    """`source` cut to its first two axial slices (the header's grid kept)."""
    image = nib.load(str(source))
    nib.save(nib.Nifti1Image(np.asarray(image.dataobj)[..., :2], image.affine), str(out))
    return out


def test_too_few_slices_is_one_line_in_the_bundle_and_in_predict(study, bundle, hidden_env, tmp_path):
    checkpoint, root = study
    short = two_slices(root / "P002" / "T2.nii.gz", tmp_path / "T2.nii.gz")
    files = {"T1": root / "P002" / "T1.nii.gz", "T2": short}
    done = bundle_run(bundle, hidden_env, files, tmp_path / "p.json")
    assert done.returncode == 1
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("error: study P002: T2 has 2 slices, fewer than the 3"), done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    with pytest.raises(StudyError, match="T2 has 2 slices, fewer than the 3"):
        predict_study(checkpoint, files)
