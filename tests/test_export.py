"""transmed export: ONNX and torch.export parity, ONNX metadata and prediction from it, the MONAI bundle, the hub folder, safetensors, bad input."""

from __future__ import annotations

import json
import runpy
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tiny_overrides

from transmed.commands import export as export_command
from transmed.commands import predict as predict_command
from transmed.commands._common import run_main
from transmed.config import load_config, to_dict
from transmed.core.checkpoint import save_checkpoint
from transmed.data import label_spec
from transmed.deploy import export_checkpoint
from transmed.deploy.common import TOLERANCE, check_parity
from transmed.evaluation.prediction import predict_study
from transmed.models import build_model
from transmed.models.loading import load_trained


def save_untrained(root: Path, out: Path, name: str, **extra: str) -> Path:
    # a stem cut after its second stage: fewer operators to trace, the same export paths
    cfg = load_config(None, tiny_overrides(root, out, run_name=name, **{"model.stem_stage": "1", **extra}))
    torch.manual_seed(0)
    model = build_model(cfg, len(cfg.data.tasks), pretrained=False)
    path = out / name / "checkpoints" / "best.pt"
    save_checkpoint(path, model=model.state_dict(), config=to_dict(cfg), label_spec=label_spec(cfg).to_dict(), epoch=3)
    return path


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("runs")


@pytest.fixture(scope="module")
def stride1(mrnet_root, runs) -> Path:
    return save_untrained(mrnet_root, runs, "s1", **{"model.slice_stride": "1"})


@pytest.fixture(scope="module")
def stride3(mrnet_root, runs) -> Path:
    return save_untrained(mrnet_root, runs, "s3", **{"model.slice_stride": "3", "data.drop_modalities": "[axial]"})


def study_batch(slices: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Two studies: the first with padded slices, the second without its coronal stack."""
    torch.manual_seed(slices)
    x = torch.rand(2, 3, slices, 32, 32)
    mask = torch.ones(2, 3, slices, dtype=torch.bool)
    mask[0, :, slices - 2 :] = False
    mask[1, 1] = False
    return x, mask


def assert_checked(report) -> None:
    assert len(report.parity) == 6  # three slice counts x two batch sizes
    assert {p["batch"] for p in report.parity} == {1, 3} and len({p["slices"] for p in report.parity}) == 3
    assert report.max_abs_diff <= TOLERANCE


def test_onnx_command_matches_pytorch_under_onnxruntime(stride1, runs, capsys):
    import onnxruntime as ort

    out = runs / "model.onnx"
    run_main(lambda: export_command.main(["--checkpoint", str(stride1), "--format", "onnx", "--out", str(out)]))
    printed = capsys.readouterr().out
    assert "largest |logit difference|" in printed and "ONNX opset" in printed and "metadata_props" in printed
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    model = load_trained(stride1, device="cpu").model
    for slices in (4, 9):
        x, mask = study_batch(slices)
        got = session.run(["logits"], {"x": x.numpy(), "mask": mask.numpy()})[0]
        with torch.no_grad():
            np.testing.assert_allclose(got, model(x, mask).numpy(), atol=TOLERANCE, rtol=0)
    assert not list(runs.glob(".partial-*"))


def test_onnx_file_describes_itself_and_predicts_alone(stride1, runs, mrnet_root, capsys):
    import onnx

    out = runs / "model.onnx"
    if not out.exists():
        export_checkpoint(stride1, "onnx", out, check=False)
    props = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert json.loads(props["label_names"]) == ["abnormal", "acl", "meniscus"] and props["task"] == "multilabel"
    assert json.loads(props["modalities"]) == ["sagittal", "coronal", "axial"] and props["image_size"] == "32"
    assert props["min_slices"] == "3" and json.loads(props["temperature"]) == [1.0, 1.0, 1.0]  # uncalibrated: one per task
    preprocessing = json.loads(props["preprocessing"])
    assert preprocessing["intensity"]["method"] == "min-max" and preprocessing["stored_as"] == "uint8"

    files = {plane: mrnet_root / "valid" / plane / "0024.npy" for plane in ("axial", "sagittal", "coronal")}  # named: any order
    named = [f"{plane}={path}" for plane, path in files.items()]
    expected = predict_study(stride1, files)
    run_main(lambda: predict_command.main(["--checkpoint", str(out), *named]))
    got = json.loads(capsys.readouterr().out)
    assert got["inputs"] == expected["inputs"] and got["id"] == expected["id"] == "0024"
    diff = max(abs(got["probabilities"][k] - expected["probabilities"][k]) for k in expected["probabilities"])
    assert diff <= 1e-4, diff


def test_fewer_slices_than_a_group_are_refused_in_every_format(stride1, runs, mrnet_root, tmp_path, capsys):
    from transmed.deploy.common import TooFewSlicesError
    from transmed.deploy.graph import onnx_runner

    out = runs / "model.onnx"
    if not out.exists():
        export_checkpoint(stride1, "onnx", out, check=False)
    short = tmp_path / "0024.npy"
    np.save(short, np.load(mrnet_root / "valid" / "coronal" / "0024.npy")[:2])
    files = [str(mrnet_root / "valid" / "sagittal" / "0024.npy"), str(short), str(mrnet_root / "valid" / "axial" / "0024.npy")]
    for checkpoint in (stride1, out):
        with pytest.raises(SystemExit):
            run_main(lambda: predict_command.main(["--checkpoint", str(checkpoint), *files]))
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "coronal has 2 slices, fewer than the 3" in err, err
    x, mask = study_batch(2)
    with pytest.raises(TooFewSlicesError, match="has 2 slices, fewer than the 3 this model needs"):
        onnx_runner(out, 3)(x, mask)
    with pytest.raises(TooFewSlicesError, match="has 2 slices"):
        check_parity(load_trained(stride1, device="cpu").model, onnx_runner(out, 3), [(x, mask)])


def assert_program_matches(program: Path, checkpoint: Path, batch_sizes: tuple[int, ...] = (2,)) -> None:
    """The exported program's logits equal the checkpoint's model on `study_batch` at 3 and 8 slices."""
    module = torch.export.load(str(program)).module()
    model = load_trained(checkpoint, device="cpu").model
    for slices in (3, 8):
        x, mask = study_batch(slices)
        for b in batch_sizes:
            with torch.no_grad():
                torch.testing.assert_close(module(x[:b], mask[:b]), model(x[:b], mask[:b]), atol=TOLERANCE, rtol=0)


def test_torch_export_with_stride_3_and_a_dropped_modality(stride3, runs):
    out = runs / "model.pt2"
    report = export_checkpoint(stride3, "torch-export", out)
    assert_checked(report)
    assert_program_matches(out, stride3)
    assert report.files["model.pt2"] == out.stat().st_size


@pytest.mark.parametrize("pool, fuse, fc_norm", [("mean", "linear", "false"), ("modality", "mlp", "true")])
def test_the_shipped_pooling_recipes_export_with_dynamic_batch_and_slices(pool, fuse, fc_norm, mrnet_root, runs):
    """knee.yaml (modality, mlp, fc_norm) and demo.yaml (mean) pool the encoded tokens: the program keeps batch and slices dynamic."""
    overrides = {"model.pool": pool, "model.fuse": fuse, "model.fc_norm": fc_norm, "model.layer_scale": "1e-4"}
    checkpoint = save_untrained(mrnet_root, runs, f"pool-{pool}", **overrides)
    out = runs / f"pool-{pool}.pt2"
    assert_checked(export_checkpoint(checkpoint, "torch-export", out))
    assert_program_matches(out, checkpoint, batch_sizes=(2, 1))


def test_a_tri_net_model_exports_as_the_mean_of_its_three_heads(mrnet_root, runs):
    """`train.semi.method=tri_net` checkpoints: the exported ONNX graph gives the mean of the classifiers' logits."""
    checkpoint = save_untrained(mrnet_root, runs, "tri-net", **{"train.semi.method": "tri_net", "data.unlabelled_root": "unused"})
    assert_checked(export_checkpoint(checkpoint, "onnx", runs / "tri-net.onnx"))
    model = load_trained(checkpoint).model
    assert model.num_classifiers == 3
    x, mask = study_batch(6)
    with torch.no_grad():
        assert torch.allclose(model(x, mask), model(x, mask, classifiers=True).mean(dim=1), atol=1e-6)


def test_monai_bundle_passes_monai_verification(stride1, runs):
    from monai.bundle import ConfigParser, verify_metadata, verify_net_in_out

    from transmed.deploy.common import nan_padded
    from transmed.deploy.monai_bundle import SCHEMA_FILE, SCHEMA_MD5

    out = runs / "bundle"
    assert_checked(export_checkpoint(stride1, "monai-bundle", out))
    for name in ("configs/metadata.json", "configs/inference.json", "models/model.pt2", "scripts/standalone.py", "docs/README.md"):
        assert (out / name).is_file(), name
    meta, config = out / "configs" / "metadata.json", out / "configs" / "inference.json"
    assert "transmed" not in config.read_text()  # no import of this package: the bundle runs without it
    verify_metadata(meta_file=str(meta), filepath=str(SCHEMA_FILE), hash_val=SCHEMA_MD5)  # the vendored schema: no download
    verify_net_in_out(net_id="network_def", meta_file=str(meta), config_file=str(config), device="cpu", bundle_root=str(out), n=3)
    parser = ConfigParser()  # as MONAI builds the network from configs/inference.json
    parser.read_config(str(config))
    parser["bundle_root"] = str(out)
    network = parser.get_parsed_content("network")
    model = load_trained(stride1, device="cpu").model
    x, mask = study_batch(7)  # padding and a missing modality: NaN slices in the bundle's one input
    with torch.no_grad():
        torch.testing.assert_close(network(nan_padded(x, mask)), model(x, mask), atol=TOLERANCE, rtol=0)
    described = json.loads(meta.read_text())
    assert described["network_data_format"]["inputs"]["image"]["num_channels"] == 3
    assert described["transmed"]["min_slices"] == 3 and described["transmed"]["modalities"] == ["sagittal", "coronal", "axial"]


def test_hub_folder_round_trips_to_identical_logits(stride3, runs):
    from huggingface_hub import ModelCard

    import transmed

    out = runs / "hub"
    assert export_checkpoint(stride3, "hub", out, check=False).parity == []  # the check is below
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    loaded = transmed.load_model(out)
    model = load_trained(stride3, device="cpu").model
    x, mask = study_batch(7)
    with torch.no_grad():
        assert torch.equal(loaded(x, mask), model(x, mask))
        x2 = x.clone()
        x2[:, 2] = torch.rand_like(x2[:, 2])  # axial is dropped at inference: it cannot matter
        assert torch.equal(loaded(x2, mask), model(x, mask))
    assert ModelCard.load(out / "README.md").data.library_name == "transmed"
    config = json.loads((out / "config.json").read_text())
    assert config["label_spec"]["names"] == ["abnormal", "acl", "meniscus"] and config["epoch"] == 3


def test_old_spelling_writes_safetensors(stride1, runs, monkeypatch, capsys):
    from safetensors.torch import load_file

    out = runs / "weights.safetensors"
    monkeypatch.setattr(sys, "argv", ["transmed.export", "--checkpoint", str(stride1), "--out", str(out)])
    runpy.run_module("transmed.export", run_name="__main__")
    assert "safetensors: wrote" in capsys.readouterr().out
    state = load_file(str(out))
    own = load_trained(stride1, device="cpu").model.state_dict()
    assert state.keys() == own.keys() and all(torch.equal(state[k], own[k]) for k in own)


def run_failing(argv: list[str], capsys) -> str:
    with pytest.raises(SystemExit) as exit_info:
        run_main(lambda: export_command.main(argv))
    assert exit_info.value.code in (1, 2)
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: "), err
    return err


def test_bad_requests_are_one_line_and_nothing_is_overwritten(stride1, runs, capsys, tmp_path):
    assert "checkpoint not found" in run_failing(["--checkpoint", str(tmp_path / "no.pt"), "--out", str(tmp_path / "a.onnx")], capsys)
    assert "unknown export format 'tflite'" in run_failing(
        ["--checkpoint", str(stride1), "--format", "tflite", "--out", str(tmp_path / "a")], capsys
    )
    existing = tmp_path / "taken.safetensors"
    existing.write_text("keep me")
    assert "already exists" in run_failing(["--checkpoint", str(stride1), "--out", str(existing)], capsys)
    assert existing.read_text() == "keep me"
    other = tmp_path / "folder"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    argv = ["--checkpoint", str(stride1), "--format", "hub", "--out", str(other), "--overwrite"]
    assert "not an earlier export" in run_failing(argv, capsys)
    assert (other / "notes.txt").read_text() == "mine"
    run_main(lambda: export_command.main(["--checkpoint", str(stride1), "--out", str(existing), "--overwrite", "--no-check"]))
    assert existing.stat().st_size > 1000
