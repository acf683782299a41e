"""The stem fast paths compute what the default path computes; the benchmark measures, decides and reports."""

import json
import runpy
import sys

import pytest
import torch
from conftest import TINY_BACKBONE

from transmed import TransMed, list_models
from transmed.commands.bench import main
from transmed.core.errors import UsageError
from transmed.experiments.benchmark import bench_models, load_runs, render
from transmed.experiments.benchmark.loader import generate_studies
from transmed.experiments.benchmark.measure import Case, measure, ratio_rounds, verdict
from transmed.experiments.benchmark.plan import LoaderShape
from transmed.models import build_model


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


def test_the_benchmark_trains_with_the_trainers_own_step(monkeypatch):
    """bench.py is "a shorter train.py": its step is `engine.trainer.train_step` per micro-batch, then `optimizer_step`."""
    from transmed.engine import trainer
    from transmed.experiments.benchmark import sections
    from transmed.experiments.benchmark.plan import Shape

    assert sections.train_step is trainer.train_step and sections.optimizer_step is trainer.optimizer_step
    calls = []

    def spy(model, batch, *rest):
        calls.append(len(batch["id"]))
        return trainer.train_step(model, batch, *rest)

    monkeypatch.setattr(sections, "train_step", spy)
    cpu = torch.device("cpu")
    shape = Shape("t", 2, 5, 32, 2, TINY_BACKBONE, depth=1)
    cfg = sections.bench_config(shape, cpu, {"model.name": "transmed_small", "train.accumulate": 2, "train.amp": False})
    assert (cfg.model.variant, cfg.train.accumulate, cfg.train.amp) == ("small", 2, False)
    model = sections._model(cfg, cpu)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    sections.train_step_of(model, cfg, sections.bench_inputs(shape, cpu), cpu)()
    assert calls == [1, 1]  # two half-size micro-batches, one optimizer step
    assert any(not torch.equal(before[name], p) for name, p in model.named_parameters())


def test_bench_covers_transmed_and_every_registered_baseline():
    names = bench_models()
    assert names[:2] == ["transmed_tiny", "transmed_small"]
    assert set(names[2:]) == {n for n in list_models() if not n.startswith("transmed")}


def test_measure_interleaves_rounds_and_reports_median_and_spread():
    order, times = [], {"a": iter([0.03, 0.01, 0.02]), "b": iter([0.0, 0.0, 0.0])}

    def step(name):
        def run():
            order.append(name)
            time_s = next(times[name])
            if time_s:
                torch.ones(1)  # something to do
                import time

                time.sleep(time_s)

        return run

    rows = measure([Case({"case": "a"}, step("a"), 2), Case({"case": "b"}, step("b"), 2)], torch.device("cpu"), rounds=3)
    assert order == ["a", "b"] * 3  # round by round, each case once per round
    a = rows[0]
    assert len(a["ms_rounds"]) == 3 and a["ms_low"] <= a["ms"] <= a["ms_high"]
    assert a["ms"] == sorted(a["ms_rounds"])[1] and 15 <= a["ms"] < 30  # the median round, not the fastest
    assert a["spread"] == pytest.approx((a["ms_high"] - a["ms_low"]) / a["ms"])
    assert a["studies_per_s"] == pytest.approx(2 / (a["ms"] / 1000)) and "cpu_ms" in a and a["peak_mib"] >= 0


def test_ratios_are_taken_round_by_round():
    r = ratio_rounds([10.0, 30.0, 12.0], [5.0, 15.0, 4.0])
    assert r["ratio_rounds"] == [2.0, 2.0, 3.0] and r["ratio"] == 2.0 and (r["ratio_low"], r["ratio_high"]) == (2.0, 3.0)


def test_no_verdict_where_the_spread_is_wider_than_the_margin():
    assert verdict(1.05, 1.04, 1.06, 1.15) == "meets"
    assert verdict(1.30, 1.25, 1.35, 1.15) == "misses"
    assert verdict(1.10, 0.95, 1.30, 1.15) == "undecided"  # rounds on both sides of the goal
    assert verdict(1.00, 0.90, 1.12, 1.15) == "undecided"  # all rounds meet it, but the spread (0.22) > margin (0.15)
    assert verdict(2.5, 2.4, 2.6, 2.0, at_most=False) == "meets" and verdict(1.5, 1.4, 1.6, 2.0, at_most=False) == "misses"


def test_generated_parts_merge_into_one_mrnet_set(tmp_path):
    from transmed.data.mrnet import read_mrnet
    from transmed.data.synthesis import PLANES

    shape = LoaderShape("tiny", 3, 3, 5, 16, 16, 2)
    made = generate_studies(tmp_path / "data", 5, 2, shape, workers=2)
    assert made["processes"] == 3 and made["bytes"] > 0
    train = read_mrnet(tmp_path / "data", "train", PLANES, ["abnormal", "acl", "meniscus"])
    valid = read_mrnet(tmp_path / "data", "valid", PLANES, ["abnormal", "acl", "meniscus"])
    assert [s["id"] for s in train] == ["0000", "0001", "0002", "0003", "0004"] and [s["id"] for s in valid] == ["0005", "0006"]
    stack = __import__("numpy").load(train[3]["coronal"])
    assert stack.dtype.name == "uint8" and stack.shape[1:] == (16, 16) and 3 <= stack.shape[0] <= 5
    assert not list((tmp_path / "data").glob(".part*"))


def test_bench_smoke_writes_json_and_markdown(tmp_path, monkeypatch):
    from transmed.experiments.benchmark import loader as loader_module

    # the RSS points in this process (a fresh interpreter per point is tested once, below)
    monkeypatch.setattr(loader_module, "run_rss_child", lambda request, log: loader_module.rss_child(request))
    out, md = tmp_path / "runs" / "cpu-smoke.json", tmp_path / "BENCHMARKS.md"
    threads = torch.get_num_threads()
    try:
        args = ["--smoke", "--device", "cpu", "--threads", "1", "--models", "transmed_tiny,late_fusion"]
        main([*args, "--out", str(out), "--md-out", str(md), "--work-dir", str(tmp_path)])
    finally:
        torch.set_num_threads(threads)
    result = json.loads(out.read_text())
    assert result["schema"] == 2 and result["mode"] == "smoke" and result["machine"]["device"].startswith("CPU, ")
    assert result["sections"] == ["throughput", "fusion", "scaling", "loader", "rss", "fast_paths"]
    contention = result["contention"]
    assert contention["cores"] >= 1 and contention["load_start"] is not None and contention["load_end"] is not None
    assert {r["model"] for r in result["throughput"]} == {"transmed_tiny", "late_fusion"}
    assert {r["mode"] for r in result["throughput"]} == {"train", "infer"}
    for row in result["throughput"]:
        assert row["studies_per_s"] > 0 and row["peak_mib"] >= 0 and row["ms_low"] <= row["ms"] <= row["ms_high"]
    assert [r["vs_late_fusion"] for r in result["throughput"] if r["model"] == "late_fusion"] == [1.0, 1.0]
    assert [r["model"] for r in result["fusion"]] == ["transmed_tiny", "transmed_small"]
    for row in result["fusion"]:
        assert row["ratio"] > 0 and row["flop_ratio"] > 1 and row["slice_images"] == 2 * 2 * 3 and len(row["ratio_rounds"]) == 2
        assert row["ratio_low"] <= row["ratio"] <= row["ratio_high"] and row["verdict"] in ("meets", "misses", "undecided")
    assert {(r["slices"], r["modalities"]) for r in result["scaling"]} == {(3, 2), (5, 2), (5, 1)}

    loader = result["loader"]
    old, new = (next(r for r in loader["rows"] if r["path"] == p) for p in ("old", "new"))
    assert (old["dtype"], new["dtype"]) == ("float32", "uint8") and old["studies"] == new["studies"] == 4
    assert new["bytes_memory"] == pytest.approx(old["bytes_memory"] / 4) and new["bytes_disk"] < old["bytes_disk"]
    assert loader["comparison"]["bytes_ratio"] == pytest.approx(0.25) and loader["comparison"]["bytes_verdict"] == "meets"
    assert len(old["epoch_rounds"]) == 2 and new["device_ms_per_study"] > old["device_ms_per_study"] > 0  # the new path augments there
    assert new["loader_only_studies_per_s"] > new["studies_per_s"]
    assert loader["extrapolation"]["new_studies_per_s"] == pytest.approx(15 * new["loader_only_studies_per_s"])

    rss = result["rss"]
    assert [(r["cache"], r["studies"]) for r in rss["rows"]] == [("disk", 2), ("disk", 4), ("memory", 2), ("memory", 4)]
    assert all(r["peak_rss"] >= r["after_build_rss"] > 0 and r["build_s"] > 0 for r in rss["rows"])
    assert {f["cache"] for f in rss["fits"]} == {"disk", "memory"} and rss["generation_s"] > 0

    paths = [r["path"] for r in result["fast_paths"]]
    assert paths[0].startswith("default") and any("checkpoint_stem" in p for p in paths) and any("accumulate" in p for p in paths)
    text = md.read_text()
    assert f"## {result['machine']['device']}: smoke run" in text and "1-minute load average" in text
    for heading in ("### Throughput", "### Fusion overhead", "### Scaling", "### Data loader", "### RSS scale", "### Fast paths", "## GPU"):
        assert heading in text
    assert "No GPU run yet" in text and "Extrapolation, not a measurement" in text and "new over old: 0.250" in text

    again = tmp_path / "again.md"
    main(["--render", "--out", str(out), "--md-out", str(again)])
    assert again.read_text() == text

    gpu = dict(result, machine=dict(result["machine"], device="GPU, Test Card (80 GiB)", device_type="cuda"))
    both = render([gpu, result])
    assert "No GPU run yet" not in both and both.index("## CPU") < both.index("## GPU, Test Card")
    assert load_runs(out.parent) == [result]


def test_fusion_note_gives_no_verdict_inside_the_spread():
    from transmed.experiments.benchmark.report import fusion_note

    row = dict(model="transmed_tiny", shape="cpu", ratio=1.12, ratio_low=1.0, ratio_high=1.3, verdict="undecided", goal=1.15)
    row.update(stem_ms=100.0, tokens_share=0.05, encoder_share=0.07, flop_ratio=1.05, params_m=13.0, stem_params_m=11.0)
    note = fusion_note(row)
    assert "no verdict" in note and "meets" not in note and "1.000–1.300" in note


def test_rss_point_runs_in_a_fresh_process(tmp_path):
    """One point of the RSS scale through its own interpreter: the child's peak RSS, not this process's."""
    from transmed.experiments.benchmark.loader import run_rss_child

    shape = LoaderShape("tiny", 3, 3, 4, 16, 16, 2)
    generate_studies(tmp_path / "data", 3, 0, shape, workers=1)
    request = dict(root=str(tmp_path / "data"), studies=2, cache="memory", cache_dir=str(tmp_path / "c"), path="new", workers=0)
    row = run_rss_child(dict(request, shape=vars(shape)), print)
    assert row["studies"] == 2 and row["dtype"] == "uint8" and row["bytes_memory"] > 0
    assert 0 < row["base_rss"] <= row["peak_rss"] and row["worker_peak_rss"] is None


@pytest.mark.filterwarnings("ignore:AUC for")
def test_bench_train_section_runs_knee_config_on_the_new_data_path(tmp_path):
    out = tmp_path / "cpu-smoke-train.json"
    main(
        [
            "--smoke",
            "--device",
            "cpu",
            "--sections",
            "train",
            "--out",
            str(out),
            "--md-out",
            str(tmp_path / "B.md"),
            "--work-dir",
            str(tmp_path),
        ]
    )
    train = json.loads(out.read_text())["train"]
    assert train["config"] == "knee.yaml" and len(train["epochs"]) == 1 and train["epochs"][0]["studies_per_s"] > 0
    assert "data.cache_dtype=auto" in train["overrides"] and "data.augment_on=device" in train["overrides"]
    assert "### Training run" in (tmp_path / "B.md").read_text()


def test_bench_usage_errors(tmp_path):
    with pytest.raises(UsageError, match="--models"):
        main(["--models", "nope", "--out", str(tmp_path / "unused.json")])
    with pytest.raises(UsageError, match="--sections"):
        main(["--sections", "nope", "--out", str(tmp_path / "unused.json")])
    if not torch.cuda.is_available():
        with pytest.raises(UsageError, match="CUDA"):
            main(["--device", "cuda"])


def test_old_spelling_runs_the_command(monkeypatch, capsys):
    """`python -m transmed.bench ...` is the command's shim: same arguments, one-line errors."""
    monkeypatch.setattr(sys, "argv", ["transmed/bench.py", "--models", "nope"])
    monkeypatch.delitem(sys.modules, "transmed.bench", raising=False)  # imported by an earlier test: runpy would warn
    with pytest.raises(SystemExit) as err:
        runpy.run_module("transmed.bench", run_name="__main__")
    assert err.value.code == 2 and capsys.readouterr().err.startswith("error: --models: unknown ['nope']")
