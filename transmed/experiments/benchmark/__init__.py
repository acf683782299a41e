"""The benchmark: what a training step costs, where the time goes, how it scales, and what the loader delivers.

Sections (each a list of rows or a record in the run's JSON, and a table in BENCHMARKS.md):
- throughput: train-step and inference studies/s and peak memory of every registered model on identical inputs;
- fusion: a TransMed train step divided by its stem's train step alone on the same slice-images (the floor);
- scaling: time and memory against slices per modality and number of modalities;
- loader: the training loader at the knee shape, old data path next to new: bytes per cached study, studies/s per worker;
- rss: peak RSS of a loader epoch over 100, 300 and 1,130 studies, each in a fresh process;
- fast_paths: channels_last, checkpoint_stem, stem_chunk, accumulate, compile and bf16 (CUDA) against the default;
- train: a short configs/knee.yaml training run on synthetic MRNet-size data (`benchmarks/gpu.sh` runs it on the GPU).

Modules: `plan` (what a mode measures), `measure` (interleaved rounds, medians and spread, memory, FLOPs,
load), `sections` (the model sections), `loader` (loader and RSS), `training` (the training run),
`report` (BENCHMARKS.md). `run_bench` is the one entry point; `transmed bench` is its command.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import torch

from ...core.errors import UsageError
from ...models import list_models
from .loader import bench_loader, bench_rss
from .measure import Contention, machine_info, memory_method
from .plan import SECTIONS, Plan, make_plan
from .report import SCHEMA, load_runs, render, write_markdown, write_report
from .sections import bench_fast_paths, bench_fusion, bench_models, bench_scaling, bench_throughput, fast_paths
from .training import bench_train

__all__ = ["SECTIONS", "Plan", "bench_models", "load_runs", "make_plan", "render", "run", "run_bench", "write_markdown", "write_report"]


def _clean(value: Any) -> Any:
    """JSON-ready: NaN and infinities become None, tuples lists."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def run(
    plan: Plan, device: torch.device, models: Sequence[str], command: str, log: Callable[[str], None] = print, work: Optional[Path] = None
) -> dict:
    """The sections of `plan` on `device`; the JSON-ready result. `work`: where synthetic data and caches go (a temp dir)."""
    started, wall = datetime.now(timezone.utc), time.perf_counter()
    result: dict = {"schema": SCHEMA, "mode": plan.mode, "command": command, "started": started.isoformat(timespec="seconds")}
    result["machine"] = machine_info(device)
    result["memory_method"] = memory_method(device)
    result["shapes"] = {s.name: asdict(s) for s in (*plan.shapes, plan.scaling)}
    result["loader_shape"] = asdict(plan.loader)
    result["models"] = list(models)
    result["sections"] = list(plan.sections)
    sections: dict[str, Callable[[], Any]] = {
        "throughput": lambda: bench_throughput(plan, device, models, log),
        "fusion": lambda: bench_fusion(plan, device, log),
        "scaling": lambda: bench_scaling(plan, device, log),
        "loader": lambda: bench_loader(plan, device, result.get("throughput") or [], log, work),
        "rss": lambda: bench_rss(plan, device, log, work),
        "fast_paths": lambda: bench_fast_paths(plan, device, log),
        "train": lambda: bench_train(plan, device, log, work),
    }
    result["section_s"], result["section_contention"] = {}, {}
    with Contention() as whole:
        for name in SECTIONS:
            if name not in plan.sections:
                continue
            with Contention() as contention:
                result[name] = sections[name]()
            result["section_s"][name] = contention.result["wall_s"]
            result["section_contention"][name] = contention.result
            others = contention.result.get("others_cores")
            log(f"{name}: {contention.result['wall_s']:.0f} s" + (f" (other processes: {others:.2f} cores)" if others is not None else ""))
    result["contention"] = whole.result
    notes = [note for shape in plan.shapes for note in fast_paths(plan, device, shape)[1]] if "fast_paths" in plan.sections else []
    result["skipped"] = list(plan.skipped) + notes
    result["machine"]["load_average_end"] = whole.result["load_end"]
    result["wall_s"] = time.perf_counter() - wall
    return _clean(result)


def resolve_sections(sections: Optional[Sequence[str]], plan: Plan) -> tuple[str, ...]:
    if not sections:
        return plan.sections
    unknown = sorted(set(sections) - set(SECTIONS))
    if unknown:
        raise UsageError(f"--sections: unknown {unknown}; the sections are {', '.join(SECTIONS)}")
    return tuple(s for s in SECTIONS if s in sections)


def run_bench(
    mode: str = "quick",
    device: Optional[str] = None,
    models: Optional[Sequence[str]] = None,
    sections: Optional[Sequence[str]] = None,
    threads: Optional[int] = None,
    rss_sizes: Optional[Sequence[int]] = None,
    out: Optional[Path] = None,
    md_out: Path = Path("BENCHMARKS.md"),
    work: Optional[Path] = None,
    command: str = "transmed bench",
    log: Callable[[str], None] = lambda msg: print(f"[bench] {msg}", flush=True),
) -> tuple[dict, Path]:
    """Runs the benchmark (`mode`: smoke | quick | full) and writes its JSON (default `benchmarks/{device}-{mode}.json`,
    with the sections in the name when only some run) and BENCHMARKS.md from every run in that folder.

    Returns the result and the JSON path. Bad requests (unknown model or section, CUDA without CUDA) raise `UsageError`.
    """
    if mode not in ("smoke", "quick", "full"):
        raise UsageError(f"benchmark mode {mode!r}: one of smoke, quick, full")
    name = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if name not in ("cpu", "cuda"):
        raise UsageError(f"--device {name}: cpu or cuda")
    if name == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda, but CUDA is not available on this machine")
    models = list(models) if models else bench_models()
    unknown = sorted(set(models) - set(list_models()))
    if unknown:
        raise UsageError(f"--models: unknown {unknown}; registered: {', '.join(list_models())}")
    if rss_sizes is not None and (not rss_sizes or min(rss_sizes) < 1):
        raise UsageError("--rss-sizes: positive study counts, e.g. 100,300,1130")
    torch_device = torch.device(name)
    plan = make_plan(mode, torch_device)
    chosen = resolve_sections(sections, plan)
    plan = replace(plan, sections=chosen, skipped=plan.skipped if not sections else ())
    if rss_sizes:
        plan = replace(plan, rss_sizes=tuple(sorted(set(rss_sizes))))
    if threads:
        torch.set_num_threads(threads)
    if out is None:
        suffix = "" if chosen == make_plan(mode, torch_device).sections else "-" + "+".join(chosen)
        out = Path("benchmarks") / f"{torch_device.type}-{mode}{suffix}.json"
    result = run(plan, torch_device, models, command, log=log, work=work)
    write_report(result, Path(out), Path(md_out))
    return result, Path(out)
