"""The stem fast paths compute what the default path computes; the benchmark runs and writes its report."""

import json

import pytest
import torch

from transmed import TransMed, list_models
from transmed.bench import bench_models, main, render
from transmed.models import build_model

from conftest import TINY_BACKBONE


def _model(**kw) -> TransMed:
    torch.manual_seed(0)
    args = dict(num_modalities=2, num_outputs=3, backbone=TINY_BACKBONE, depth=1, dropout=0.0)
    args.update(kw)
    return TransMed(**args)


def _step(model: TransMed, x: torch.Tensor, mask: torch.Tensor, train: bool) -> tuple[torch.Tensor, dict, dict]:
    """Logits, parameter gradients and buffers after one forward and backward."""
    model.train(train)
    logits = model(x, mask)
    logits.square().sum().backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters()}
    buffers = {name: b.clone() for name, b in model.named_buffers()}
    return logits.detach(), grads, buffers


def _assert_same(got: tuple, ref: tuple, exact: bool = False) -> None:
    tol = dict(atol=0.0, rtol=0.0) if exact else dict(atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(got[0], ref[0], **tol)
    for name in ref[1]:
        torch.testing.assert_close(got[1][name], ref[1][name], **tol, msg=f"gradient of {name}")
    for name in ref[2]:
        torch.testing.assert_close(got[2][name], ref[2][name], **tol, msg=f"buffer {name}")


@pytest.fixture
def batch():
    torch.manual_seed(1)
    x = torch.rand(2, 2, 7, 32, 32)
    mask = torch.ones(2, 2, 7, dtype=torch.bool)
    mask[1, 0, 4:] = False
    return x, mask


def test_channels_last_matches_default_in_training(batch):
    model = _model(channels_last=True)
    assert all(p.is_contiguous(memory_format=torch.channels_last) for p in model.stem.parameters() if p.dim() == 4)
    _assert_same(_step(model, *batch, train=True), _step(_model(), *batch, train=True))


def test_checkpoint_stem_matches_default_exactly_and_counts_batchnorm_once(batch):
    """Recomputation in backward gives the same logits and gradients, and BatchNorm running stats move once."""
    _assert_same(_step(_model(checkpoint_stem=True), *batch, train=True), _step(_model(), *batch, train=True), exact=True)


def test_checkpoint_stem_is_inactive_outside_training(batch):
    model = _model(checkpoint_stem=True).eval()
    with torch.no_grad():
        assert torch.equal(model(*batch), _model().eval()(*batch))


def test_stem_chunk_matches_default(batch):
    """Chunks give the same logits and gradients in eval mode; in training too when the stem has no BatchNorm."""
    _assert_same(_step(_model(stem_chunk=3), *batch, train=False), _step(_model(), *batch, train=False))
    no_batchnorm = dict(backbone="test_convnext")
    _assert_same(_step(_model(**no_batchnorm, stem_chunk=3), *batch, train=True), _step(_model(**no_batchnorm), *batch, train=True))


def test_all_stem_fast_paths_together(batch):
    both = dict(stem_chunk=4, checkpoint_stem=True, channels_last=True)
    _assert_same(_step(_model(**both), *batch, train=False), _step(_model(), *batch, train=False))


def test_factory_passes_fast_path_keys_to_transmed_only(tiny_cfg):
    cfg = tiny_cfg(**{"model.stem_chunk": "5", "model.channels_last": "true", "train.checkpoint_stem": "true"})
    model = build_model(cfg, 3)
    assert (model.stem_chunk, model.stem.channels_last, model.checkpoint_stem) == (5, True, True)
    for name in list_models():
        if not name.startswith("transmed"):
            cfg.model.name = name
            build_model(cfg, 3)  # the baselines are built from the same config without those arguments


def test_bench_covers_transmed_and_every_registered_baseline():
    names = bench_models()
    assert names[:2] == ["transmed_tiny", "transmed_small"]
    assert set(names[2:]) == {n for n in list_models() if not n.startswith("transmed")}


def test_bench_smoke_writes_json_and_markdown(tmp_path):
    out, md = tmp_path / "runs" / "cpu-smoke.json", tmp_path / "BENCHMARKS.md"
    threads = torch.get_num_threads()
    try:
        args = ["--smoke", "--device", "cpu", "--threads", "1", "--models", "transmed_tiny,late_fusion"]
        main([*args, "--out", str(out), "--md-out", str(md)])
    finally:
        torch.set_num_threads(threads)
    result = json.loads(out.read_text())
    assert result["mode"] == "smoke" and result["machine"]["device"].startswith("CPU, ")
    assert {r["model"] for r in result["throughput"]} == {"transmed_tiny", "late_fusion"}
    assert {r["mode"] for r in result["throughput"]} == {"train", "infer"}
    for row in result["throughput"]:
        assert row["studies_per_s"] > 0 and row["peak_mib"] >= 0
    assert [r["model"] for r in result["fusion"]] == ["transmed_tiny", "transmed_small"]
    for row in result["fusion"]:
        assert row["ratio"] > 0 and row["flop_ratio"] > 1 and row["slice_images"] == 2 * 2 * 3
    assert {(r["slices"], r["modalities"]) for r in result["scaling"]} == {(3, 2), (5, 2), (5, 1)}
    loaders = [r["loader"] for r in result["data"]]
    assert len(loaders) == 4 and sum(name.startswith("uncached") for name in loaders) == 2
    assert all(r["studies_per_s"] > 0 and r["vs_train"] > 0 for r in result["data"])
    paths = [r["path"] for r in result["fast_paths"]]
    assert paths[0].startswith("default") and any("checkpoint_stem" in p for p in paths) and any("accumulate" in p for p in paths)
    text = md.read_text()
    assert f"## {result['machine']['device']}: smoke run" in text
    for heading in ("### Throughput", "### Fusion overhead", "### Scaling", "### Data loader", "### Fast paths", "## GPU"):
        assert heading in text
    assert "No GPU run yet" in text

    again = tmp_path / "again.md"
    main(["--render", "--out", str(out), "--md-out", str(again)])
    assert again.read_text() == text

    gpu = dict(result, machine=dict(result["machine"], device="GPU, Test Card (80 GiB)", device_type="cuda"))
    both = render([gpu, result])
    assert "No GPU run yet" not in both and both.index("## CPU") < both.index("## GPU, Test Card")


def test_bench_cli_errors_exit_2():
    with pytest.raises(SystemExit) as err:
        main(["--models", "nope", "--out", "unused.json"])
    assert err.value.code == 2
    if not torch.cuda.is_available():
        with pytest.raises(SystemExit) as err:
            main(["--device", "cuda"])
        assert err.value.code == 2
