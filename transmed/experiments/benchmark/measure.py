"""Measuring: interleaved timing rounds (medians and their spread), peak memory, FLOPs, and how loaded the machine was.

Every timed thing is a `Case`; `measure` runs its cases round by round, each case once per round,
so load from other processes falls on all of them alike, and reports the median of the rounds
with the fastest and slowest round next to it. Ratios between cases are taken round by round
(`ratio_rounds`), and `verdict` gives no verdict where the spread of those rounds is wider than
the margin to the goal.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import math
import os
import platform
import resource
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch

# ---------------------------------------------------------------- memory


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


def release_free_heap() -> None:
    """Hands freed heap back to the kernel (glibc), so the next RSS reading starts from what is really held."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def max_rss_bytes(who: int = resource.RUSAGE_SELF) -> int:
    """Lifetime peak RSS of this process (or, RUSAGE_CHILDREN, of its largest waited-for descendant); kilobytes on Linux."""
    return resource.getrusage(who).ru_maxrss * (1 if sys.platform == "darwin" else 1024)


def rss_bytes() -> int:
    """Resident set size of this process now (Linux; the lifetime peak elsewhere)."""
    try:
        return _status_kib("VmRSS") * 1024
    except (OSError, KeyError):
        return max_rss_bytes()


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
            release_free_heap()
            self.hwm = _reset_rss_peak()
            self.base = _status_kib("VmRSS") * 1024 if self.hwm else max_rss_bytes()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            peak = torch.cuda.max_memory_allocated(self.device)
            self.total_mib = peak / 2**20
        else:
            peak = _status_kib("VmHWM") * 1024 if self.hwm else max_rss_bytes()
        self.mib = max(0, peak - self.base) / 2**20


# ---------------------------------------------------------------- timing


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class Case:
    """One thing to time: what it reports, the step it runs, and how many studies one step processes."""

    info: dict
    step: Callable[[], None]
    studies: int


def spread(values: Sequence[float]) -> dict:
    """Median, fastest and slowest of the rounds, and the relative spread (slowest - fastest) / median."""
    median = statistics.median(values)
    low, high = min(values), max(values)
    return {"median": median, "low": low, "high": high, "spread": (high - low) / median if median else math.nan}


def measure(cases: Sequence[Case], device: torch.device, rounds: int, warmup: int = 0) -> list[dict]:
    """`warmup` untimed steps per case, then `rounds` interleaved rounds; the first timed step also measures peak memory.

    Each row is the case's info plus: `ms` (median of the rounds), `ms_low`/`ms_high` (fastest, slowest),
    `spread` ((slowest - fastest) / median), `ms_rounds` (every round, for ratios taken round by round),
    `studies_per_s` (at the median), `peak_mib`; on CPU also `cpu_ms` (median process CPU time, which
    being descheduled does not inflate) and `cpu_rounds`; on CUDA `total_mib`.
    """
    if rounds < 1:
        raise ValueError("measure needs at least one round")
    for _ in range(warmup):
        for case in cases:
            case.step()
    gc.collect()  # once: freeing cyclic garbage takes long with torch, timm and MONAI loaded
    peaks = [PeakMemory(device) for _ in cases]
    wall: list[list[float]] = [[] for _ in cases]
    cpu: list[list[float]] = [[] for _ in cases]
    for round_ in range(rounds):
        for case, peak, spent, used in zip(cases, peaks, wall, cpu):
            with peak if round_ == 0 else contextlib.nullcontext():
                sync(device)
                start, start_cpu = time.perf_counter(), time.process_time()
                case.step()
                sync(device)
                spent.append(time.perf_counter() - start)
                used.append(time.process_time() - start_cpu)
    rows = []
    for case, spent, used, peak in zip(cases, wall, cpu, peaks):
        ms = [1000 * s for s in spent]
        stats = spread(ms)
        row = dict(
            case.info,
            ms=stats["median"],
            ms_low=stats["low"],
            ms_high=stats["high"],
            spread=stats["spread"],
            ms_rounds=ms,
            studies_per_s=case.studies / (stats["median"] / 1000),
            peak_mib=peak.mib,
        )
        if device.type == "cuda":
            row["total_mib"] = peak.total_mib
        else:
            cpu_ms = [1000 * s for s in used]
            row.update(cpu_ms=statistics.median(cpu_ms), cpu_rounds=cpu_ms)
        rows.append(row)
    return rows


def ratio_rounds(numerator: Sequence[float], denominator: Sequence[float]) -> dict:
    """A ratio of two interleaved cases, round by round: its median, lowest and highest round, and `rounds`."""
    ratios = [n / d for n, d in zip(numerator, denominator, strict=True)]
    stats = spread(ratios)
    return {"ratio": stats["median"], "ratio_low": stats["low"], "ratio_high": stats["high"], "ratio_rounds": ratios}


def named_ratio(ratio: dict, name: str) -> dict:
    """`ratio_rounds`'s median, lowest and highest round under a row's own keys: `name`, `name_low`, `name_high`."""
    return {name: ratio["ratio"], f"{name}_low": ratio["ratio_low"], f"{name}_high": ratio["ratio_high"]}


def verdict(median: float, low: float, high: float, goal: float, at_most: bool = True) -> str:
    """`meets` / `misses` the goal, or `undecided` where the spread (highest - lowest round) is wider than the margin
    (the distance from the median to the goal): then the rounds cannot tell the two apart."""
    if high - low > abs(goal - median):
        return "undecided"
    return "meets" if (median <= goal if at_most else median >= goal) else "misses"


def count_flops(step: Callable[[], None]) -> int:
    """Matmul and convolution FLOPs of one call of `step` (forward and backward), by torch's FlopCounterMode."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        step()
    return counter.get_total_flops()


# ---------------------------------------------------------------- the machine and its load


def cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def load_average() -> Optional[float]:
    """The 1-minute load average (None where the platform has none)."""
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else None


def _busy_ticks() -> Optional[tuple[int, int]]:
    """Machine-wide (busy, steal) CPU ticks from /proc/stat; None off Linux."""
    try:
        fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    except (OSError, ValueError, IndexError):
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    return user + nice + system + irq + softirq + steal, steal


def _own_cpu_s() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


class Contention:
    """How many cores other processes kept busy while a block ran: machine-wide busy CPU time (/proc/stat) minus
    this process's and its finished children's, over the wall time; `steal` is time the hypervisor gave elsewhere."""

    def __enter__(self) -> "Contention":
        self.result: Optional[dict] = None
        self.start = (time.perf_counter(), _busy_ticks(), _own_cpu_s(), load_average())
        return self

    def __exit__(self, *exc: object) -> None:
        wall0, ticks0, own0, load0 = self.start
        wall, ticks, own = time.perf_counter() - wall0, _busy_ticks(), _own_cpu_s() - own0
        result: dict = {"wall_s": wall, "load_start": load0, "load_end": load_average(), "cores": cores()}
        if ticks0 is not None and ticks is not None and wall > 0:
            hz = os.sysconf("SC_CLK_TCK")
            busy, steal = (ticks[0] - ticks0[0]) / hz, (ticks[1] - ticks0[1]) / hz
            result.update(others_cores=max(0.0, busy - own) / wall, steal_cores=steal / wall, own_cores=own / wall)
        self.result = result


def shared(contention: Optional[dict]) -> bool:
    """Whether other processes used a noticeable share of the cores (over a tenth, at least 0.2 of a core)."""
    if not contention or contention.get("others_cores") is None:
        return False
    return contention["others_cores"] > max(0.2, 0.1 * contention["cores"])


def _cpu_name() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def describe_device(device: torch.device) -> str:
    """The device line every table of a run stands under, e.g. `CPU, 2 cores (AMD EPYC)`."""
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        return f"GPU, {props.name} ({props.total_memory / 2**30:.0f} GiB), CUDA {torch.version.cuda}, {cores()} CPU cores"
    return f"CPU, {cores()} cores ({_cpu_name()})"


def machine_info(device: torch.device) -> dict:
    import monai
    import timm

    memory = None
    with contextlib.suppress(OSError, ValueError, IndexError):
        memory = int(Path("/proc/meminfo").read_text().splitlines()[0].split()[1]) * 1024
    return {
        "device": describe_device(device),
        "device_type": device.type,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "timm": timm.__version__,
        "monai": monai.__version__,
        "torch_threads": torch.get_num_threads(),
        "cpu_cores": cores(),
        "memory_bytes": memory,
        "load_average": load_average(),
    }
