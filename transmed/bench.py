"""`python -m transmed.bench`: what a training step costs, where the time goes, and how it scales.

Sections, each a list of rows in the JSON and a table in BENCHMARKS.md:
- throughput: train-step and inference studies/s and peak memory of every registered model on identical inputs;
- fusion: a TransMed train step divided by its stem's train step alone on the same slice-images (the floor);
- scaling: time and memory against slices per modality and number of modalities;
- data: loader studies/s, uncached and cached, next to what a train step consumes;
- fast_paths: channels_last, checkpoint_stem, stem_chunk, accumulate, compile and bf16 (CUDA) against the default.

A run writes its JSON (default `benchmarks/{device}-{mode}.json`) and renders the Markdown file
(default BENCHMARKS.md) from every JSON run in that folder, each under its own device line.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import ctypes
import gc
import json
import math
import os
import platform
import resource
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import nn

from .config import load_config
from .engine.utils import autocast, write_json
from .models import build_model, list_models
from .models.tokens import group_slices

NUM_OUTPUTS = 3  # the knee's abnormal / ACL / meniscus
FUSION_GOAL = 1.15
TRANSMED_MODELS = ("transmed_tiny", "transmed_small")


@dataclass(frozen=True)
class Shape:
    """Identical inputs for every model: `batch` studies of `modalities` x `slices` x `image_size`^2, and the backbone.

    `depth` overrides TransMed's transformer depth (None: the variant's own).
    """

    name: str
    modalities: int
    slices: int
    image_size: int
    batch: int
    backbone: str
    depth: Optional[int] = None

    @property
    def label(self) -> str:
        return f"{self.name} ({self.batch} x {self.modalities} x {self.slices} x {self.image_size}², {self.backbone})"


@dataclass(frozen=True)
class Plan:
    """How much a mode measures: shapes, repetitions, scaling points, data set size, compile."""

    mode: str
    shapes: tuple[Shape, ...]
    scaling: Shape
    scaling_slices: tuple[int, ...]
    scaling_modalities: tuple[int, ...]
    warmup: int = 1
    rounds: int = 3
    fusion_rounds: int = 3
    data_studies: int = 16
    data_disk_size: int = 256
    data_workers: tuple[int, ...] = (0,)
    compile: bool = False
    skipped: tuple[str, ...] = ()


def make_plan(mode: str, device: torch.device) -> Plan:
    """`quick` (CPU-sized shape, < 3 min on 2 CPU cores), `full` (adds the knee-like shape and compile), `smoke` (tests)."""
    cuda = device.type == "cuda"
    knee = Shape("knee", 3, 32, 224, 4 if cuda else 1, "resnet18")
    cpu = Shape("cpu", 3, 10, 64, 2, "resnet18")
    if mode == "smoke":
        tiny = Shape("smoke", 2, 5, 32, 2, "test_resnet", depth=1)
        return Plan("smoke", (tiny,), tiny, (3, 5), (1, 2), warmup=0, rounds=1, fusion_rounds=1, data_studies=3, data_disk_size=32)
    if mode == "quick":
        return Plan(
            "quick",
            (cpu,),
            replace(cpu, name="cpu-scaling", slices=16, batch=1, backbone="test_resnet"),
            (8, 16, 32, 64),
            (1, 2, 3, 4),
            warmup=1,
            rounds=2,
            fusion_rounds=4,
            data_studies=8,
            compile=cuda,
            skipped=("knee shape: full run only",) + (() if cuda else ("torch.compile: full run only on CPU (compiling takes minutes)",)),
        )
    return Plan(
        "full",
        (cpu, knee),
        replace(cpu, name="cpu-scaling", slices=16, batch=1),
        (8, 16, 32, 64),
        (1, 2, 3, 4),
        warmup=2,
        rounds=5,
        fusion_rounds=7,
        data_studies=32,
        data_workers=(0, 2),
        compile=True,
    )


# ---------------------------------------------------------------- measuring


def _status_kib(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def _reset_rss_peak() -> bool:
    """Resets the kernel's peak-RSS mark of this process (Linux >= 4.0); False where that is not possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _release_free_heap() -> None:
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def _max_rss_bytes() -> int:
    """The process's lifetime peak RSS (kilobytes on Linux, bytes on macOS)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)


def memory_method(device: torch.device) -> str:
    """How `PeakMemory` measures on `device`, in words for the report."""
    if device.type == "cuda":
        return "torch.cuda.max_memory_allocated during one step, above what was allocated before it (weights, optimizer state, inputs)"
    if _reset_rss_peak():
        return "process peak RSS (VmHWM, reset through /proc/self/clear_refs) during one step, above the RSS before it"
    return "growth of the process's lifetime peak RSS (getrusage ru_maxrss) during one step: 0 when an earlier step peaked higher"


class PeakMemory:
    """Peak memory of a block above what was held before it, in MiB (see `memory_method`)."""

    def __init__(self, device: torch.device) -> None:
        self.device, self.mib, self.total_mib = device, math.nan, math.nan

    def __enter__(self) -> "PeakMemory":
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.base = torch.cuda.memory_allocated(self.device)
        else:
            _release_free_heap()
            self.hwm = _reset_rss_peak()
            self.base = _status_kib("VmRSS") * 1024 if self.hwm else _max_rss_bytes()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            peak = torch.cuda.max_memory_allocated(self.device)
            self.total_mib = peak / 2**20
        else:
            peak = _status_kib("VmHWM") * 1024 if self.hwm else _max_rss_bytes()
        self.mib = max(0, peak - self.base) / 2**20


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class Case:
    """One thing to time: what it reports, the step it runs, and how many studies one step processes."""

    info: dict
    step: Callable[[], None]
    studies: int


def measure(
    cases: Sequence[Case], device: torch.device, plan: Plan, rounds: Optional[int] = None, warmup: Optional[int] = None
) -> list[dict]:
    """Warm-up steps, then timed rounds (defaults: the plan's); each case's first timed step also measures peak memory.

    Cases run interleaved, round by round, so load from other processes hits all of them alike, and
    each keeps its fastest round (other processes only ever add time). Each row is the case's info plus
    that step time (and on CPU the process CPU time, which being descheduled does not inflate),
    studies/s and peak memory.
    """
    for _ in range(plan.warmup if warmup is None else warmup):
        for case in cases:
            case.step()
    gc.collect()  # once: freeing cyclic garbage takes long with torch, timm and MONAI loaded
    peaks = [PeakMemory(device) for _ in cases]
    wall: list[list[float]] = [[] for _ in cases]
    cpu: list[list[float]] = [[] for _ in cases]
    for round_ in range(rounds or plan.rounds):
        for case, peak, spent, used in zip(cases, peaks, wall, cpu):
            with peak if round_ == 0 else contextlib.nullcontext():
                _sync(device)
                start, start_cpu = time.perf_counter(), time.process_time()
                case.step()
                _sync(device)
                spent.append(time.perf_counter() - start)
                used.append(time.process_time() - start_cpu)
    rows = []
    for case, spent, used, peak in zip(cases, wall, cpu, peaks):
        seconds = min(spent)
        row = dict(case.info, ms=1000 * seconds, studies_per_s=case.studies / seconds, peak_mib=peak.mib)
        if device.type == "cuda":
            row["total_mib"] = peak.total_mib
        else:
            row["cpu_ms"] = 1000 * min(used)
        rows.append(row)
    return rows


def count_flops(step: Callable[[], None]) -> int:
    """Matmul and convolution FLOPs of one call of `step` (forward and backward), by torch's FlopCounterMode."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        step()
    return counter.get_total_flops()


# ---------------------------------------------------------------- models and steps


def bench_config(shape: Shape, device: torch.device, overrides: Optional[dict] = None) -> DictConfig:
    """The config the models of `shape` are built from (as training builds them)."""
    items = {
        "data.modalities": "[" + ",".join(f"m{i}" for i in range(shape.modalities)) + "]",
        "data.image_size": shape.image_size,
        "model.backbone": shape.backbone,
        "model.pretrained": "false",
        "train.batch_size": shape.batch,
        "train.device": device.type,
    }
    if shape.depth is not None:
        items["model.depth"] = shape.depth
    items.update(overrides or {})
    return load_config(None, [f"{k}={v}" for k, v in items.items()])


def bench_inputs(shape: Shape, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Seeded x (B, M, S, H, W), all-real mask and multi-label targets."""
    gen = torch.Generator().manual_seed(0)
    b, m, s, size = shape.batch, shape.modalities, shape.slices, shape.image_size
    x = torch.rand(b, m, s, size, size, generator=gen)
    y = torch.randint(0, 2, (b, NUM_OUTPUTS), generator=gen).float()
    return x.to(device), torch.ones(b, m, s, dtype=torch.bool, device=device), y.to(device)


def _model(cfg: DictConfig, device: torch.device) -> nn.Module:
    torch.manual_seed(cfg.seed)
    return build_model(cfg, NUM_OUTPUTS).to(device)


def _optimizer(model: nn.Module, cfg: DictConfig) -> torch.optim.Optimizer:
    from .engine.trainer import build_optimizer

    return build_optimizer(model, cfg)


def train_step(
    model: nn.Module, cfg: DictConfig, inputs: tuple, device: torch.device, amp: bool, accumulate: int = 1
) -> Callable[[], None]:
    """Forward, BCE loss, backward (over `accumulate` micro-batches), gradient clipping and an AdamW step, as training does."""
    model.train()
    optimizer = _optimizer(model, cfg)
    x, mask, y = inputs

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        for xs, ms, ys in zip(x.chunk(accumulate), mask.chunk(accumulate), y.chunk(accumulate)):
            with autocast(device, amp):
                loss = F.binary_cross_entropy_with_logits(model(xs, ms).float(), ys) / accumulate
            loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), cfg.train.grad_clip)
        optimizer.step()

    return step


def stem_step(model: nn.Module, cfg: DictConfig, inputs: tuple, device: torch.device, amp: bool) -> tuple[Callable[[], None], int]:
    """The floor under a TransMed train step: a copy of its stem alone on the same slice-images.

    Forward, a trivial loss on the pooled features, backward, clipping and the same optimizer over
    the stem's parameters. Returns the step and the number of slice-images it processes.
    """
    x, mask, _ = inputs
    images, group_mask = group_slices(x, mask, model.slice_window, model.slice_stride, model.slice_mode)
    images = images[group_mask].contiguous()
    stem = copy.deepcopy(model.stem).train()
    optimizer = _optimizer(stem, cfg)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with autocast(device, amp):
            loss = stem(images).float().mean(dim=(2, 3)).sum()
        loss.backward()
        nn.utils.clip_grad_norm_(stem.parameters(), cfg.train.grad_clip)
        optimizer.step()

    return step, images.shape[0]


def infer_step(model: nn.Module, inputs: tuple, device: torch.device, amp: bool) -> Callable[[], None]:
    """An eval-mode forward pass under `torch.inference_mode`, as evaluation runs it."""
    model.eval()
    x, mask, _ = inputs

    def step() -> None:
        with torch.inference_mode(), autocast(device, amp):
            model(x, mask)

    return step


def _params_m(model: nn.Module) -> float:
    return sum(p.numel() for p in model.parameters()) / 1e6


def _precisions(device: torch.device) -> tuple[bool, ...]:
    """amp off and on where bf16 autocast exists (CUDA); off only on CPU."""
    return (False, True) if device.type == "cuda" and torch.cuda.is_bf16_supported() else (False,)


def _precision(amp: bool) -> str:
    return "bf16" if amp else "fp32"


def bench_models() -> list[str]:
    """TransMed tiny and small, then every other registered model (the baselines) that is not a TransMed size."""
    return list(TRANSMED_MODELS) + [name for name in list_models() if not name.startswith("transmed")]


# ---------------------------------------------------------------- sections


def bench_throughput(plan: Plan, device: torch.device, models: Sequence[str], log: Callable[[str], None]) -> list[dict]:
    """Train and inference steps of each model on the same inputs, per shape and (CUDA) precision."""
    rows = []
    for shape in plan.shapes:
        inputs = bench_inputs(shape, device)
        for mode in ("train", "infer"):
            cases = []
            for name in models:
                cfg = bench_config(shape, device, {"model.name": name})
                for amp in _precisions(device):
                    model = _model(cfg, device)
                    step = train_step(model, cfg, inputs, device, amp) if mode == "train" else infer_step(model, inputs, device, amp)
                    info = dict(shape=shape.name, model=name, mode=mode, precision=_precision(amp), params_m=_params_m(model))
                    cases.append(Case(info, step, shape.batch))
            log(f"throughput: {shape.label}, {mode}, {len(cases)} cases")
            rows += measure(cases, device, plan)
            del cases
    return rows


def bench_fusion(plan: Plan, device: torch.device, log: Callable[[str], None]) -> list[dict]:
    """Stem alone, TransMed without encoder blocks (tokens, embeddings, head) and the full model, timed interleaved.

    `flop_ratio` (matmul and convolution FLOPs of the full step over the stem's) is the ratio if every FLOP cost the same.
    """
    rows = []
    amp = _precisions(device)[-1]
    for shape in plan.shapes:
        inputs = bench_inputs(shape, device)
        for name in TRANSMED_MODELS:
            cfg = bench_config(shape, device, {"model.name": name})
            no_encoder_cfg = bench_config(shape, device, {"model.name": name, "model.depth": 0})
            full = _model(cfg, device)
            stem, images = stem_step(full, cfg, inputs, device, amp)
            steps = {
                "stem": stem,
                "no_encoder": train_step(_model(no_encoder_cfg, device), no_encoder_cfg, inputs, device, amp),
                "full": train_step(full, cfg, inputs, device, amp),
            }
            info = dict(shape=shape.name, model=name, precision=_precision(amp), slice_images=images)
            log(f"fusion: {shape.label}, {name}")
            flops = {part: count_flops(step) for part, step in steps.items()}  # doubles as the warm-up step
            cases = [Case(dict(info, part=part), step, shape.batch) for part, step in steps.items()]
            parts = {row["part"]: row for row in measure(cases, device, plan, plan.fusion_rounds, warmup=max(0, plan.warmup - 1))}
            stem_ms, no_encoder_ms, full_ms = (parts[p]["ms"] for p in ("stem", "no_encoder", "full"))
            row = dict(
                info,
                stem_ms=stem_ms,
                no_encoder_ms=no_encoder_ms,
                full_ms=full_ms,
                ratio=full_ms / stem_ms,
                flop_ratio=flops["full"] / flops["stem"],
                tokens_share=(no_encoder_ms - stem_ms) / stem_ms,
                encoder_share=(full_ms - no_encoder_ms) / stem_ms,
                stem_peak_mib=parts["stem"]["peak_mib"],
                full_peak_mib=parts["full"]["peak_mib"],
                stem_params_m=_params_m(full.stem),
                params_m=_params_m(full),
            )
            if "cpu_ms" in parts["full"]:
                row["cpu_ratio"] = parts["full"]["cpu_ms"] / parts["stem"]["cpu_ms"]
            rows.append(row)
    return rows


def bench_scaling(plan: Plan, device: torch.device, log: Callable[[str], None]) -> list[dict]:
    """TransMed tiny and its stem alone against slices per modality, then against the number of modalities."""
    base = plan.scaling
    points = [(s, base.modalities) for s in plan.scaling_slices]
    points += [(base.slices, m) for m in plan.scaling_modalities if (base.slices, m) not in points]
    amp = _precisions(device)[-1]
    rows = []
    for slices, modalities in points:
        shape = replace(base, slices=slices, modalities=modalities)
        inputs = bench_inputs(shape, device)
        cfg = bench_config(shape, device, {"model.name": "transmed_tiny"})
        model = _model(cfg, device)
        stem, images = stem_step(model, cfg, inputs, device, amp)
        groups = images // (shape.batch * modalities)
        info = dict(
            shape=base.name,
            slices=slices,
            modalities=modalities,
            precision=_precision(amp),
            slice_images=images,
            tokens=1 + modalities * groups * model.tokenizer.grid_size**2,
        )
        log(f"scaling: {slices} slices x {modalities} modalities")
        cases = [Case(info, stem, shape.batch), Case(info, train_step(model, cfg, inputs, device, amp), shape.batch)]
        stem_row, full_row = measure(cases, device, plan)
        rows.append(
            dict(
                info,
                stem_ms=stem_row["ms"],
                full_ms=full_row["ms"],
                ratio=full_row["ms"] / stem_row["ms"],
                stem_peak_mib=stem_row["peak_mib"],
                full_peak_mib=full_row["peak_mib"],
            )
        )
    return rows


def _epoch_seconds(loader: torch.utils.data.DataLoader) -> float:
    start = time.perf_counter()
    for _ in loader:
        pass
    return time.perf_counter() - start


def _loader_seconds(overrides: dict, cache_dir: Path) -> dict[str, float]:
    """Seconds per pass over the training split, uncached (building the dataset preprocesses) and cached."""
    from .data import build_dataset, build_loader

    cfg = load_config(None, [f"{k}={v}" for k, v in overrides.items()])
    build_dataset(cfg, "valid", train=False)  # one study through the pipeline: the readers' one-time imports stay out of the timings
    start = time.perf_counter()
    dataset = build_dataset(cfg, "train", train=True)
    seconds = {"uncached: memory cache being filled (dataset build)": time.perf_counter() - start}
    loader = build_loader(cfg, dataset, train=True)
    _epoch_seconds(loader)  # starts the (persistent) workers
    seconds["memory cache (default), epoch"] = _epoch_seconds(loader)
    del loader, dataset
    cfg = load_config(None, [f"{k}={v}" for k, v in {**overrides, "data.cache_dir": cache_dir}.items()])
    start = time.perf_counter()
    loader = build_loader(cfg, build_dataset(cfg, "train", train=True), train=True)
    _epoch_seconds(loader)
    seconds["uncached: disk cache being filled (dataset build + first epoch)"] = time.perf_counter() - start
    seconds["disk cache (data.cache_dir) warm, epoch"] = _epoch_seconds(loader)
    return seconds


def bench_data(plan: Plan, device: torch.device, throughput: Sequence[dict], log: Callable[[str], None]) -> list[dict]:
    """Training loaders (augmentation on) over synthetic MRNet-layout studies, against the train step's studies/s."""
    from .data import generate_mrnet

    rows = []
    for shape in plan.shapes:
        consumed = next(
            (r["studies_per_s"] for r in throughput if (r["shape"], r["model"], r["mode"]) == (shape.name, "transmed_tiny", "train")), None
        )
        with tempfile.TemporaryDirectory(prefix="transmed-bench-") as tmp:
            log(f"data: writing {plan.data_studies} synthetic studies ({shape.slices} slices of {plan.data_disk_size}² per plane)")
            root = generate_mrnet(Path(tmp) / "data", plan.data_studies, 1, plan.data_disk_size, shape.slices, shape.slices, seed=0)
            for workers in plan.data_workers:
                log(f"data: {shape.label}, {workers} workers")
                overrides = {
                    "data.format": "mrnet",
                    "data.root": root,
                    "data.image_size": shape.image_size,
                    "data.num_workers": workers,
                    "train.batch_size": shape.batch,
                    "train.device": device.type,
                }
                for loader, seconds in _loader_seconds(overrides, Path(tmp) / f"cache-{workers}").items():
                    rate = plan.data_studies / seconds
                    rows.append(
                        dict(
                            shape=shape.name,
                            loader=loader,
                            workers=workers,
                            pin_memory=device.type == "cuda",
                            persistent_workers=workers > 0,
                            disk_size=plan.data_disk_size,
                            studies_per_s=rate,
                            consumed=consumed,
                            vs_train=rate / consumed if consumed else None,
                        )
                    )
    return rows


@dataclass(frozen=True)
class FastPath:
    """One training configuration of TransMed tiny: config overrides and the step's switches."""

    name: str
    overrides: dict = field(default_factory=dict)
    amp: bool = False
    compile: bool = False
    accumulate: int = 1


def fast_paths(plan: Plan, device: torch.device, shape: Shape) -> tuple[list[FastPath], list[str]]:
    """The variants measured at `shape`, and notes on those left out."""
    images = shape.batch * shape.modalities * (shape.slices - 2)
    chunk = max(1, math.ceil(images / 4))
    amp = _precisions(device)[-1]
    paths = [FastPath("default (fp32)")]
    if amp:
        paths.append(FastPath("bf16 autocast", amp=True))
    prefix = "bf16 + " if amp else ""
    paths += [
        FastPath(prefix + "channels_last", {"model.channels_last": "true"}, amp),
        FastPath(prefix + "checkpoint_stem", {"train.checkpoint_stem": "true"}, amp),
        FastPath(prefix + f"stem_chunk={chunk}", {"model.stem_chunk": chunk}, amp),
        FastPath(prefix + f"checkpoint_stem + stem_chunk={chunk}", {"train.checkpoint_stem": "true", "model.stem_chunk": chunk}, amp),
    ]
    notes = []
    if shape.batch >= 2:
        paths.append(FastPath(prefix + "accumulate=2 (half-size micro-batches)", amp=amp, accumulate=2))
    else:
        notes.append(f"{shape.name}: accumulate needs a batch of at least 2")
    if plan.compile:
        paths.append(FastPath("compile", compile=True))
        if amp:
            paths.append(FastPath("bf16 + compile", amp=True, compile=True))
    return paths, notes


def bench_fast_paths(plan: Plan, device: torch.device, log: Callable[[str], None]) -> list[dict]:
    """TransMed tiny's train step under each fast path, with speed and memory relative to the default."""
    rows = []
    for shape in plan.shapes:
        inputs = bench_inputs(shape, device)
        cases = []
        for path in fast_paths(plan, device, shape)[0]:
            cfg = bench_config(shape, device, {"model.name": "transmed_tiny", **path.overrides})
            model = _model(cfg, device)
            step = train_step(torch.compile(model) if path.compile else model, cfg, inputs, device, path.amp, path.accumulate)
            cases.append(Case(dict(shape=shape.name, model="transmed_tiny", path=path.name), step, shape.batch))
        log(f"fast paths: {shape.label}, {len(cases)} variants")
        measured = measure(cases, device, plan)
        default = measured[0]
        for row in measured:
            memory = row["peak_mib"] / default["peak_mib"] if default["peak_mib"] else None
            rows.append(dict(row, speedup=row["studies_per_s"] / default["studies_per_s"], memory_ratio=memory))
    return rows


# ---------------------------------------------------------------- machine and report


def _cpu_name() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def describe_device(device: torch.device) -> str:
    """The device line every table of a run stands under, e.g. `CPU, 2 cores (AMD EPYC)`."""
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        return f"GPU, {props.name} ({props.total_memory / 2**30:.0f} GiB), CUDA {torch.version.cuda}"
    return f"CPU, {_cores()} cores ({_cpu_name()})"


def machine_info(device: torch.device) -> dict:
    import monai
    import timm

    return {
        "device": describe_device(device),
        "device_type": device.type,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "timm": timm.__version__,
        "monai": monai.__version__,
        "torch_threads": torch.get_num_threads(),
        "cpu_cores": _cores(),
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }


def run(plan: Plan, device: torch.device, models: Sequence[str], command: str, log: Callable[[str], None] = print) -> dict:
    """All sections of `plan` on `device`; the JSON-ready result."""
    started, wall = datetime.now(timezone.utc), time.perf_counter()
    result: dict = {"schema": 1, "mode": plan.mode, "command": command, "started": started.isoformat(timespec="seconds")}
    result["machine"] = machine_info(device)
    result["memory_method"] = memory_method(device)
    result["shapes"] = {s.name: asdict(s) for s in (*plan.shapes, plan.scaling)}
    result["models"] = list(models)
    sections: dict[str, Callable[[], list[dict]]] = {
        "throughput": lambda: bench_throughput(plan, device, models, log),
        "fusion": lambda: bench_fusion(plan, device, log),
        "scaling": lambda: bench_scaling(plan, device, log),
        "data": lambda: bench_data(plan, device, result["throughput"], log),
        "fast_paths": lambda: bench_fast_paths(plan, device, log),
    }
    result["section_s"] = {}
    for name, section in sections.items():
        start = time.perf_counter()
        result[name] = section()
        result["section_s"][name] = time.perf_counter() - start
        log(f"{name}: {result['section_s'][name]:.0f} s")
    result["skipped"] = list(plan.skipped) + [note for shape in plan.shapes for note in fast_paths(plan, device, shape)[1]]
    result["machine"]["load_average_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    result["wall_s"] = time.perf_counter() - wall
    return result


def _num(value: Optional[float], digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:,.{digits}f}"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def _shape_line(result: dict, name: str) -> str:
    s = result["shapes"][name]
    depth = f", transformer depth {s['depth']}" if s.get("depth") is not None else ""
    size = f"batch {s['batch']} x {s['modalities']} modalities x {s['slices']} slices x {s['image_size']}² px"
    return f"`{name}`: {size}, backbone {s['backbone']}{depth}"


def fusion_note(row: dict, shared: bool = False) -> str:
    """What the measured fusion overhead is made of and what bounds it, in words; `shared`: other processes loaded the machine."""
    verdict = "meets" if row["ratio"] <= FUSION_GOAL else "is above"
    cpu = f" (CPU-time ratio {row['cpu_ratio']:.3f})" if "cpu_ratio" in row else ""
    note = (
        f"{row['model']} on `{row['shape']}`: ratio {row['ratio']:.3f}{cpu} {verdict} the goal of {FUSION_GOAL}. Over the stem's "
        f"{row['stem_ms']:.0f} ms, tokens, embeddings, scatter and head add {100 * row['tokens_share']:+.1f}% and the transformer "
        f"encoder {100 * row['encoder_share']:+.1f}%. What bounds it is the encoder's work: its matmuls are "
        f"{100 * (row['flop_ratio'] - 1):.1f}% of the stem's convolution FLOPs at this shape (FLOP ratio {row['flop_ratio']:.3f}), "
        f"and AdamW updates {row['params_m'] - row['stem_params_m']:.1f}M parameters next to the stem's {row['stem_params_m']:.1f}M."
    )
    if shared:
        note += " Other processes loaded the machine during this run, so the timed ratios carry their noise; the FLOP ratio does not."
    return note


def render_run(result: dict) -> list[str]:
    """One run's section of BENCHMARKS.md."""
    m = result["machine"]
    load = m.get("load_average") or [math.nan]
    load_end = m.get("load_average_end") or [math.nan]
    cuda = m["device_type"] == "cuda"
    shared = max(load[0], load_end[0]) > m["cpu_cores"]
    lines = [
        f"## {m['device']}: {result['mode']} run",
        "",
        f"`{result['command']}`, {result['started']}, {result['wall_s']:.0f} s wall. "
        f"torch {m['torch']} ({m['torch_threads']} CPU thread{'s' if m['torch_threads'] != 1 else ''}), "
        f"timm {m['timm']}, monai {m['monai']}, "
        f"Python {m['python']}, {m['platform']}. 1-minute load average {load[0]:.1f} at the start, {load_end[0]:.1f} at the end"
        + (
            f": above the {m['cpu_cores']} cores, so other processes shared them and the timings are slower and noisier than idle."
            if shared
            else f" ({m['cpu_cores']} cores)."
        ),
        "",
        "Shapes: " + "; ".join(_shape_line(result, name) for name in result["shapes"]) + ".",
        f"Times are the fastest of interleaved rounds; peak memory (MiB) is the {result['memory_method']}.",
        "",
        "### Throughput",
        "",
    ]
    by_key: dict[tuple, dict] = {}
    for row in result["throughput"]:
        by_key.setdefault((row["shape"], row["model"], row["precision"]), {"params_m": row["params_m"]})[row["mode"]] = row
    header = ["shape", "model", "params (M)", "precision", "train studies/s", "train peak MiB", "infer studies/s", "infer peak MiB"]
    if cuda:
        header += ["train total MiB"]
    body = []
    for (shape, model, precision), parts in by_key.items():
        train, infer = parts.get("train", {}), parts.get("infer", {})
        cells = [
            shape,
            model,
            _num(parts["params_m"]),
            precision,
            _num(train.get("studies_per_s"), 2),
            _num(train.get("peak_mib"), 0),
            _num(infer.get("studies_per_s"), 2),
            _num(infer.get("peak_mib"), 0),
        ]
        if cuda:
            cells.append(_num(train.get("total_mib"), 0))
        body.append(cells)
    lines += _table(header, body)
    lines += [
        "",
        "### Fusion overhead",
        "",
        f"A TransMed train step (forward, loss, backward, clipping, AdamW) divided by the same stem's train step alone on the same "
        f"slice-images (trivial loss on pooled features, AdamW over the stem). `no encoder` is TransMed with `model.depth=0`. "
        f"CPU-time ratio: the same with process CPU time (CPU runs; not inflated by waiting for the cores). FLOP ratio: matmul and "
        f"convolution FLOPs of the two steps, the ratio if every FLOP cost the same. Goal: at most {FUSION_GOAL}.",
        "",
    ]
    lines += _table(
        [
            "shape",
            "model",
            "precision",
            "slice-images/step",
            "stem ms",
            "no encoder ms",
            "TransMed ms",
            "ratio",
            "CPU-time ratio",
            "FLOP ratio",
            "stem peak MiB",
            "TransMed peak MiB",
        ],
        [
            [
                r["shape"],
                r["model"],
                r["precision"],
                str(r["slice_images"]),
                _num(r["stem_ms"], 0),
                _num(r["no_encoder_ms"], 0),
                _num(r["full_ms"], 0),
                f"**{r['ratio']:.3f}**",
                _num(r.get("cpu_ratio"), 3),
                f"{r['flop_ratio']:.3f}",
                _num(r["stem_peak_mib"], 0),
                _num(r["full_peak_mib"], 0),
            ]
            for r in result["fusion"]
        ],
    )
    lines += [""] + [f"- {fusion_note(r, shared)}" for r in result["fusion"]]
    lines += [
        "",
        "### Scaling",
        "",
        "TransMed tiny and its stem alone (train step), against slices per modality and number of modalities. Tokens per study = "
        "1 + modalities x slice groups x grid cells; the stem's cost grows with the slice-images, attention's with tokens².",
        "",
    ]
    lines += _table(
        [
            "shape",
            "slices",
            "modalities",
            "slice-images/step",
            "tokens/study",
            "stem ms",
            "TransMed ms",
            "ratio",
            "stem peak MiB",
            "TransMed peak MiB",
        ],
        [
            [
                r["shape"],
                str(r["slices"]),
                str(r["modalities"]),
                str(r["slice_images"]),
                str(r["tokens"]),
                _num(r["stem_ms"], 0),
                _num(r["full_ms"], 0),
                f"{r['ratio']:.3f}",
                _num(r["stem_peak_mib"], 0),
                _num(r["full_peak_mib"], 0),
            ]
            for r in result["scaling"]
        ],
    )
    disk = "/".join(sorted({f"{r['disk_size']}²" for r in result["data"]}))
    lines += [
        "",
        "### Data loader",
        "",
        f"Training loaders (augmentation on) over synthetic studies in the MRNet layout ({disk} slices on disk), built with "
        "`build_dataset`/`build_loader` as training builds them. Uncached rows include preprocessing (load, scale, anti-aliased "
        "resize); cached epochs only read, augment and collate. "
        "`x train` is the loader's studies/s over what a TransMed tiny train step consumes at that shape (above 1: the loader keeps up).",
        "",
    ]
    lines += _table(
        ["shape", "loader", "workers", "pinned", "persistent workers", "studies/s", "x train"],
        [
            [
                r["shape"],
                r["loader"],
                str(r["workers"]),
                "yes" if r["pin_memory"] else "no",
                "yes" if r["persistent_workers"] else "no",
                _num(r["studies_per_s"], 1),
                _num(r["vs_train"], 1),
            ]
            for r in result["data"]
        ],
    )
    lines += [
        "",
        "### Fast paths",
        "",
        "TransMed tiny train step under each switch, against the default at the same shape. Checkpointing the stem as one segment "
        "recomputes all its activations at once in backward, so its peak drops only together with `model.stem_chunk` (one chunk "
        "recomputed at a time); `stem_chunk` alone bounds memory in inference, not in training. In training, BatchNorm stems "
        "normalise each chunk with its own statistics (outputs match the default exactly in eval mode).",
        "",
    ]
    lines += _table(
        ["shape", "switch", "studies/s", "speed-up", "peak MiB", "memory vs default"],
        [
            [r["shape"], r["path"], _num(r["studies_per_s"], 2), f"{r['speedup']:.2f}x", _num(r["peak_mib"], 0), _num(r["memory_ratio"], 2)]
            for r in result["fast_paths"]
        ],
    )
    if result["skipped"]:
        lines += ["", "Not measured in this run: " + "; ".join(result["skipped"]) + "."]
    return lines + [""]


def render(results: Sequence[dict]) -> str:
    """BENCHMARKS.md from runs: CPU runs first, then GPU runs (or a note that none has been made)."""
    order = {"smoke": 0, "quick": 1, "full": 2}
    results = sorted(results, key=lambda r: (r["machine"]["device_type"] != "cpu", order.get(r["mode"], 3), r["started"]))
    lines = [
        "# Benchmarks",
        "",
        "Generated by `python -m transmed.bench` from the JSON runs next to it (`benchmarks/*.json`); do not edit by hand, re-run instead.",
        "`python -m transmed.bench --quick` takes under 3 minutes on 2 CPU cores; without `--quick` the knee-like shape, more rounds and",
        "`torch.compile` are added. `--device cuda` benchmarks a GPU (bf16 autocast and compile on and off). Every number below comes from",
        "the run whose device line it stands under.",
        "",
    ]
    for result in results:
        lines += render_run(result)
    if not any(r["machine"]["device_type"] == "cuda" for r in results):
        lines += [
            "## GPU",
            "",
            "No GPU run yet: these files were generated on machines without a GPU, so there are no GPU numbers here. "
            "`python -m transmed.bench --device cuda` on a GPU machine adds its section (bf16 and compile on and off).",
            "",
        ]
    return "\n".join(lines)


def load_runs(folder: Path) -> list[dict]:
    """Every benchmark run (JSON written by this module) in `folder`."""
    runs = []
    for path in sorted(folder.glob("*.json")):
        with contextlib.suppress(json.JSONDecodeError, UnicodeDecodeError):
            data = json.loads(path.read_text())
            if isinstance(data, dict) and data.get("schema") == 1:
                runs.append(data)
    return runs


def write_report(result: dict, out: Path, md_out: Path) -> None:
    """Writes this run's JSON to `out`, then renders `md_out` from every JSON run in `out`'s folder."""
    write_json(out, result)
    md_out.parent.mkdir(parents=True, exist_ok=True)
    md_out.write_text(render(load_runs(out.parent)))


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m transmed.bench", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="CPU-sized shape only: under 3 minutes on 2 CPU cores")
    parser.add_argument("--smoke", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--device", choices=("cpu", "cuda"), default=None, help="default: cuda when available, else cpu")
    parser.add_argument(
        "--models", default=None, help="comma-separated models for the throughput table (default: TransMed tiny, small and the baselines)"
    )
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's own choice, one per core)")
    parser.add_argument("--out", type=Path, default=None, help="this run's JSON (default: benchmarks/{device}-{mode}.json)")
    parser.add_argument("--md-out", type=Path, default=Path("BENCHMARKS.md"), help="the Markdown file rendered from all runs next to --out")
    parser.add_argument(
        "--render", action="store_true", help="measure nothing: re-render --md-out from the JSON runs in benchmarks/ (or --out's folder)"
    )
    return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> None:
    args = parse_args(argv)
    if args.render:
        folder = args.out.parent if args.out else Path("benchmarks")
        args.md_out.write_text(render(load_runs(folder)))
        print(f"[bench] rendered {args.md_out} from {folder}/*.json")
        return
    name = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        print("--device cuda, but CUDA is not available on this machine", file=sys.stderr)
        raise SystemExit(2)
    models = args.models.split(",") if args.models else bench_models()
    unknown = sorted(set(models) - set(list_models()))
    if unknown:
        print(f"--models: unknown {unknown}; registered: {', '.join(list_models())}", file=sys.stderr)
        raise SystemExit(2)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(name)
    mode = "smoke" if args.smoke else "quick" if args.quick else "full"
    out = args.out or Path("benchmarks") / f"{device.type}-{mode}.json"
    flags = [f"--{mode}"] if mode != "full" else []
    flags += [f"--device {name}"] if args.device else []
    flags += [f"--models {args.models}"] if args.models else []
    flags += [f"--threads {args.threads}"] if args.threads else []
    command = " ".join(["python -m transmed.bench", *flags])
    result = run(make_plan(mode, device), device, models, command, log=lambda msg: print(f"[bench] {msg}", flush=True))
    write_report(result, out, args.md_out)
    print(f"[bench] {result['wall_s']:.0f} s; wrote {out} and {args.md_out}")


if __name__ == "__main__":
    main()
