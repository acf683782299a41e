"""The data sections of the benchmark: the training loader at the knee shape, old path next to new, and the RSS scale.

Paths (`PATHS`), measured side by side in one run:
- old: `data.cache_dtype=float32` + `data.augment_on=loader` (float32 cache, the augmentation per study in the loader: `augment.RandAugmentd`);
- new: `data.cache_dtype=auto` + `data.augment_on=device` (uint8 cache, `augment_batch` on the batch on the training
  device). On a CPU-only machine the new path's studies/s include that batch augmentation run on the CPU, so a
  worker's studies/s compare like for like.

Synthetic studies are written in the MRNet layout by `transmed.data.synthesis.generate_mrnet`, in parallel
parts (one per core) merged into one set, and deleted after the section.
"""

from __future__ import annotations

import csv
import json
import multiprocessing
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch

from ...config import load_config
from .measure import Contention, cores, named_ratio, ratio_rounds, spread, verdict
from .plan import GPU_MACHINE_CORES, LoaderShape, Plan

Log = Callable[[str], None]

PATHS: dict[str, dict[str, str]] = {
    "old": {"data.cache_dtype": "float32", "data.augment_on": "loader"},
    "new": {"data.cache_dtype": "auto", "data.augment_on": "device"},
}
PATH_LABELS = {
    "old": "float32 cache, augmentation per study in the loader",
    "new": "compact (uint8) cache, batch augmentation on the device",
}
BYTES_GOAL = 1 / 3  # new bytes per cached study over old: at most this
SPEED_GOAL = 2.0  # new per-worker studies/s over old: at least this


# ---------------------------------------------------------------- synthetic studies


def _generate_part(root: str, num_train: int, num_valid: int, shape: LoaderShape, seed: int) -> str:
    from ...data.synthesis import generate_mrnet

    return str(generate_mrnet(root, num_train, num_valid, shape.disk_size, shape.min_slices, shape.max_slices, seed))


def _folder_bytes(folder: Path, pattern: str = "*") -> int:
    return sum(p.stat().st_size for p in folder.rglob(pattern) if p.is_file())


def generate_studies(root: Path, num_train: int, num_valid: int, shape: LoaderShape, seed: int = 0, workers: Optional[int] = None) -> dict:
    """`num_train` + `num_valid` synthetic studies of `shape` in the MRNet layout under `root`, made in parallel parts.

    Each part is `generate_mrnet` with its own seed in its own process; the parts are then renumbered
    into one set (train ids first, then valid). Returns the seconds it took and the bytes written.
    """
    from ...data.synthesis import PLANES, TASKS

    start = time.perf_counter()
    root.mkdir(parents=True, exist_ok=True)
    workers = max(1, min(workers or cores(), num_train + num_valid))
    counts = [num_train // workers + (i < num_train % workers) for i in range(workers)]
    parts = [(root / f".part{i}", count, 0, seed + i) for i, count in enumerate(counts) if count]
    if num_valid:
        parts.append((root / ".part-valid", 0, num_valid, seed + workers))
    if len(parts) == 1:
        _generate_part(str(parts[0][0]), *parts[0][1:3], shape, parts[0][3])
    else:
        context = multiprocessing.get_context("fork" if sys.platform == "linux" else "spawn")
        with ProcessPoolExecutor(len(parts), mp_context=context) as pool:
            list(pool.map(_generate_part, *zip(*[(str(p), n, v, shape, s) for p, n, v, s in parts])))
    rows: dict[tuple[str, str], list[list[str]]] = {(split, task): [] for split in ("train", "valid") for task in TASKS}
    next_id = 0
    for part, _, _, _ in parts:
        for split in ("train", "valid"):
            renamed = {}
            with open(part / f"{split}-{TASKS[0]}.csv", newline="") as f:
                ids = sorted(r[0] for r in csv.reader(f) if r)
            for sid in ids:
                renamed[sid] = f"{next_id:04d}"
                next_id += 1
                for plane in PLANES:
                    target = root / split / plane
                    target.mkdir(parents=True, exist_ok=True)
                    os.replace(part / split / plane / f"{sid}.npy", target / f"{renamed[sid]}.npy")
            for task in TASKS:
                with open(part / f"{split}-{task}.csv", newline="") as f:
                    rows[(split, task)] += [[renamed[r[0]], r[1]] for r in csv.reader(f) if r]
        shutil.rmtree(part)
    for (split, task), lines in rows.items():
        for plane in PLANES:
            (root / split / plane).mkdir(parents=True, exist_ok=True)
        with open(root / f"{split}-{task}.csv", "w", newline="") as f:
            csv.writer(f).writerows(lines)
    return {"seconds": time.perf_counter() - start, "bytes": _folder_bytes(root, "*.npy"), "processes": len(parts)}


# ---------------------------------------------------------------- one loader configuration


def loader_overrides(shape: LoaderShape, root: Path, path: str, workers: int, cache_dir: Optional[Path], device: str = "cpu") -> dict:
    from ...data.synthesis import PLANES

    items = {
        "data.format": "mrnet",
        "data.root": str(root),
        "data.modalities": "[" + ",".join(PLANES[: shape.planes]) + "]",
        "data.image_size": shape.image_size,
        "data.num_workers": workers,
        "data.augment": "true",
        "train.batch_size": shape.batch,
        "train.device": device,
        **PATHS[path],
    }
    if cache_dir is not None:
        items["data.cache_dir"] = str(cache_dir)
    return items


def config_for(overrides: dict):
    return load_config(None, [f"{k}={v}" for k, v in overrides.items()])


def cached_items(dataset) -> list[dict]:
    """The deterministic (cached) output of every study of a MONAI cached dataset, as the dataset holds it."""
    cache = getattr(dataset, "_cache", None)
    if cache is not None:  # CacheDataset: in memory
        return list(cache)
    return [dataset._cachecheck(item) for item in dataset.data]  # PersistentDataset: read back from its files


def tensor_bytes(item: dict, keys: Sequence[str]) -> int:
    return sum(torch.as_tensor(item[k]).nbytes for k in keys if item.get(k) is not None)


def cache_stats(cfg, dataset) -> dict:
    """Bytes per cached study: in memory (its tensors) and, with `data.cache_dir`, on disk (its files); and the dtype."""
    from ...data.datasets import cache_folder

    keys = list(cfg.data.modalities)
    items = cached_items(dataset)
    out = {
        "bytes_memory": sum(tensor_bytes(item, keys) for item in items) / max(1, len(items)),
        "dtype": str(torch.as_tensor(items[0][keys[0]]).dtype).replace("torch.", "") if items else None,
    }
    if cfg.data.cache_dir:
        out["bytes_disk"] = _folder_bytes(cache_folder(cfg), "*.pt") / max(1, len(items))
    return out


class Epoch:
    """One pass of a training loader, as the training loop consumes it: each batch to the device (`to_device`: the
    float conversion of a compact batch happens there, fused with `augment_batch` under `data.augment_on=device`).
    That device work is timed apart (`device_s`): the rest is what a loader worker does."""

    def __init__(self, cfg, dataset, device: torch.device, device_work: bool = True) -> None:
        from ...data import build_loader
        from ...data.augment import training_augment

        self.cfg, self.device, self.device_work = cfg, device, device_work
        self.loader = build_loader(cfg, dataset, train=True, generator=torch.Generator().manual_seed(0))
        self.augment = training_augment(cfg, device, epoch_seed=0)  # None unless data.augment_on=device

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def __call__(self) -> dict:
        from ...data.collate import to_device

        device_s, studies = 0.0, 0
        start = time.perf_counter()
        for batch in self.loader:
            if not self.device_work:  # the loader alone
                studies += len(batch["id"])
                continue
            t = time.perf_counter()
            x, mask = to_device(batch, self.device, self.augment)
            self._sync()
            device_s += time.perf_counter() - t
            studies += len(x)
        return {"seconds": time.perf_counter() - start, "device_s": device_s, "studies": studies}


# ---------------------------------------------------------------- the loader section


def _epoch_times(total: dict) -> dict:
    """A row's epoch seconds from `spread` over its rounds: median, fastest, slowest and spread."""
    return dict(epoch_s=total["median"], epoch_s_low=total["low"], epoch_s_high=total["high"], spread=total["spread"])


def bench_loader(plan: Plan, device: torch.device, throughput: Sequence[dict], log: Log, work: Optional[Path] = None) -> dict:
    """Old and new path at the knee shape, side by side: cache fill, bytes per cached study, studies/s per worker
    (interleaved epochs on one torch thread, median and spread), the ratio of the two with a verdict against the goals,
    and the rate a 16-core GPU machine's workers would reach (an extrapolation)."""
    from ...data import build_dataset

    shape, n = plan.loader, plan.loader_studies
    # what a TransMed tiny train step consumes at the model shape of the same name (the full run's `knee`)
    consumed = next(
        (
            r["studies_per_s"]
            for r in throughput
            if (r["shape"], r["model"], r["mode"], r["precision"]) == (shape.name, "transmed_tiny", "train", "fp32")
        ),
        None,
    )
    with tempfile.TemporaryDirectory(prefix="transmed-bench-loader-", dir=work) as tmp:
        root = Path(tmp) / "data"
        log(f"loader: writing {n} synthetic studies ({shape.label})")
        made = generate_studies(root, n, 0, shape)
        rows, epochs = [], {}
        for path in PATHS:
            cfg = config_for(loader_overrides(shape, root, path, 0, Path(tmp) / f"cache-{path}", device.type))
            start = time.perf_counter()
            dataset = build_dataset(cfg, "train", train=True)  # fills the disk cache: every study preprocessed and written
            build_s = time.perf_counter() - start
            stats = cache_stats(cfg, dataset)
            epoch = Epoch(cfg, dataset, device)
            epoch()  # warm-up: page cache, first-call costs
            epochs[path] = epoch
            rows.append(dict(path=path, label=PATH_LABELS[path], workers=0, cache="disk", studies=len(dataset), build_s=build_s, **stats))
            log(f"loader: {path} path: cache filled in {build_s:.1f} s, {stats['bytes_memory'] / 2**20:.1f} MiB per study in memory")
        measured: dict[str, list[dict]] = {path: [] for path in PATHS}
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # one worker's work: a DataLoader worker runs torch on one thread
        try:
            for round_ in range(plan.loader_rounds):
                for path, epoch in epochs.items():
                    measured[path].append(epoch())
                log(f"loader: round {round_ + 1}/{plan.loader_rounds}")
        finally:
            torch.set_num_threads(threads)
        for row in rows:
            results = measured[row["path"]]
            total = spread([r["seconds"] for r in results])
            loader_only = spread([r["seconds"] - r["device_s"] for r in results])
            row.update(
                **_epoch_times(total),
                epoch_rounds=[r["seconds"] for r in results],
                loader_only_rounds=[r["seconds"] - r["device_s"] for r in results],
                studies_per_s=row["studies"] / total["median"],
                studies_per_s_low=row["studies"] / total["high"],
                studies_per_s_high=row["studies"] / total["low"],
                loader_only_studies_per_s=row["studies"] / loader_only["median"],
                device_ms_per_study=1000 * spread([r["device_s"] for r in results])["median"] / row["studies"],
                fill_studies_per_s=row["studies"] / row["build_s"],
                vs_train=(row["studies"] / total["median"]) / consumed if consumed else None,
            )
        for workers in [w for w in plan.loader_workers if w > 0]:
            for path in PATHS:
                cfg = config_for(loader_overrides(shape, root, path, workers, Path(tmp) / f"cache-{path}", device.type))
                dataset = build_dataset(cfg, "train", train=True)  # the cache is warm: reads only
                epoch = Epoch(cfg, dataset, device, device_work=False)  # what the workers deliver; the device work is measured above
                log(f"loader: {path} path, {workers} workers")
                results = [epoch() for _ in range(plan.loader_rounds)]
                total = spread([r["seconds"] for r in results])
                rate = len(dataset) / total["median"]
                single = next(r for r in rows if r["path"] == path and r["workers"] == 0)
                rows.append(
                    dict(
                        path=path,
                        label=PATH_LABELS[path],
                        workers=workers,
                        cache="disk",
                        studies=len(dataset),
                        **_epoch_times(total),
                        studies_per_s=rate,
                        per_worker=rate / workers,
                        scaling_efficiency=rate / (workers * single["loader_only_studies_per_s"]),
                    )
                )
        old, new = (next(r for r in rows if r["path"] == p and r["workers"] == 0) for p in ("old", "new"))
        # per-worker speed, round by round: the new path's rate over the old one's = old epoch seconds over new
        speed = ratio_rounds(old["epoch_rounds"], new["epoch_rounds"])
        # a loader worker's own work: without the device work (to_device, and the new path's augmentation), which on a
        # GPU machine runs on the GPU
        worker = ratio_rounds(old["loader_only_rounds"], new["loader_only_rounds"])
        bytes_ratio = new["bytes_memory"] / old["bytes_memory"]
        comparison = dict(
            bytes_ratio=bytes_ratio,
            bytes_disk_ratio=new["bytes_disk"] / old["bytes_disk"] if old.get("bytes_disk") else None,
            bytes_goal=BYTES_GOAL,
            bytes_verdict="meets" if bytes_ratio <= BYTES_GOAL else "misses",
            **named_ratio(speed, "speed_ratio"),
            speed_rounds=speed["ratio_rounds"],
            speed_goal=SPEED_GOAL,
            speed_verdict=verdict(speed["ratio"], speed["ratio_low"], speed["ratio_high"], SPEED_GOAL, at_most=False),
            **named_ratio(worker, "worker_ratio"),
            worker_verdict=verdict(worker["ratio"], worker["ratio_low"], worker["ratio_high"], SPEED_GOAL, at_most=False),
        )
        gpu_workers = GPU_MACHINE_CORES - 1
        extrapolation = dict(
            cores=GPU_MACHINE_CORES,
            workers=gpu_workers,
            old_studies_per_s=gpu_workers * old["loader_only_studies_per_s"],
            new_studies_per_s=gpu_workers * new["loader_only_studies_per_s"],
            measured_efficiency={f"{r['path']}@{r['workers']}": r["scaling_efficiency"] for r in rows if r["workers"] > 0},
        )
    return dict(
        shape=vars(shape) | {"label": shape.label},
        studies=n,
        generation_s=made["seconds"],
        generation_processes=made["processes"],
        source_bytes_per_study=made["bytes"] / max(1, n),
        rows=rows,
        comparison=comparison,
        extrapolation=extrapolation,
    )


# ---------------------------------------------------------------- the RSS scale


def rss_child(request: dict) -> dict:
    """In a fresh process: build the new path's training dataset over the first `studies` studies, then one loader
    epoch (the batches as the workers deliver them, no device work); peak RSS of this process (the cache holder) over
    both and over the epoch alone, of its largest loader worker, and the times."""
    from ...data import build_dataset, read_manifest
    from .measure import _reset_rss_peak, _status_kib, max_rss_bytes, release_free_heap, rss_bytes

    base = rss_bytes()
    cache_dir = Path(request["cache_dir"]) if request["cache"] == "disk" else None
    shape = LoaderShape(**request["shape"])
    cfg = config_for(loader_overrides(shape, Path(request["root"]), request["path"], request["workers"], cache_dir))
    manifest = read_manifest(cfg, "train")[: request["studies"]]
    start = time.perf_counter()
    dataset = build_dataset(cfg, "train", train=True, manifest=manifest)
    build_s = time.perf_counter() - start
    build_peak = max(max_rss_bytes(resource.RUSAGE_SELF), rss_bytes())  # before the reset below, which also resets this
    stats = cache_stats(cfg, dataset)
    release_free_heap()
    after_build = rss_bytes()
    hwm = _reset_rss_peak()  # from here the kernel's peak mark (VmHWM) is the epoch's
    result = Epoch(cfg, dataset, torch.device("cpu"), device_work=False)()  # the loader alone: batches as the workers deliver them
    epoch_peak = max(_status_kib("VmHWM") * 1024, rss_bytes()) if hwm else None
    return dict(
        request,
        studies=len(dataset),
        build_s=build_s,
        epoch_s=result["seconds"],
        base_rss=base,
        build_peak_rss=build_peak,
        after_build_rss=after_build,
        epoch_peak_rss=epoch_peak,
        peak_rss=max(build_peak, epoch_peak or 0, max_rss_bytes(resource.RUSAGE_SELF)),
        worker_peak_rss=max_rss_bytes(resource.RUSAGE_CHILDREN) if request["workers"] else None,
        **stats,
    )


def run_rss_child(request: dict, log: Log) -> dict:
    """`rss_child` in a new interpreter (`python -m transmed.experiments.benchmark._rss_child`), so no size inherits
    another's heap; its last stdout line is the JSON result."""
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    proc = subprocess.run(
        [sys.executable, "-m", "transmed.experiments.benchmark._rss_child", json.dumps(request)],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"RSS child for {request['studies']} studies ({request['cache']} cache) failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _growth(points: Sequence[dict], key: str) -> Optional[float]:
    first, last = points[0], points[-1]
    if first.get(key) is None or last.get(key) is None:
        return None
    return (last[key] - first[key]) / (last["studies"] - first["studies"])


def rss_fits(rows: Sequence[dict]) -> list[dict]:
    """Per cache, how RSS grows per added study from the smallest size to the largest, against the bytes per cached study.

    The verdict is on the epoch's peak (what the loader holds while it runs: "no faster than bytes per study x studies",
    with 10% allowance for per-study bookkeeping); the build's peak, which also holds the preprocessing's freed
    temporaries until the heap is trimmed, and the RSS after the build are given next to it.
    """
    fits = []
    for cache in dict.fromkeys(r["cache"] for r in rows):
        points = [r for r in rows if r["cache"] == cache]
        if points[-1]["studies"] == points[0]["studies"]:
            continue
        per_study = points[-1]["bytes_memory"]
        epoch = _growth(points, "epoch_peak_rss")
        growth = epoch if epoch is not None else _growth(points, "peak_rss")  # no VmHWM reset: the lifetime peak
        fits.append(
            dict(
                cache=cache,
                measure="epoch peak" if epoch is not None else "peak",
                growth_per_study=growth,
                build_growth_per_study=_growth(points, "build_peak_rss"),
                after_build_growth_per_study=_growth(points, "after_build_rss"),
                bytes_per_study=per_study,
                growth_over_bytes=growth / per_study if per_study else None,
                expected_per_study=per_study if cache == "memory" else 0.0,
                verdict="meets" if growth <= 1.1 * per_study else "misses",
            )
        )
    return fits


def bench_rss(plan: Plan, device: torch.device, log: Log, work: Optional[Path] = None) -> dict:
    """Peak RSS of the new path's loader (dataset build + one epoch) over 100, 300 and 1,130 studies (the plan's sizes),
    each in a fresh process, with `data.cache_dir` on disk (as configs/knee.yaml) and the memory cache (the default);
    the generated set is made once and deleted after."""
    shape, sizes = plan.loader, sorted(plan.rss_sizes)
    with tempfile.TemporaryDirectory(prefix="transmed-bench-rss-", dir=work) as tmp:
        root = Path(tmp) / "data"
        log(f"rss: writing {sizes[-1]} synthetic studies ({shape.label})")
        made = generate_studies(root, sizes[-1], 0, shape)
        log(f"rss: {made['seconds']:.0f} s, {made['bytes'] / 2**30:.2f} GiB")
        rows = []
        for cache in plan.rss_caches:
            for size in sizes:
                cache_dir = Path(tmp) / f"cache-{cache}-{size}"
                request = dict(
                    root=str(root),
                    studies=size,
                    cache=cache,
                    cache_dir=str(cache_dir),
                    path="new",
                    workers=plan.rss_workers,
                    shape=vars(shape),
                )
                log(f"rss: {size} studies, {cache} cache")
                with Contention() as contention:
                    row = run_rss_child(request, log)
                row["contention"] = contention.result
                row.pop("shape", None)
                rows.append(row)
                shutil.rmtree(cache_dir, ignore_errors=True)
                log(
                    f"rss: {size} studies, {cache}: build {row['build_s']:.0f} s, epoch {row['epoch_s']:.0f} s, "
                    f"peak {row['peak_rss'] / 2**30:.2f} GiB"
                )
    fits = rss_fits(rows)
    return dict(
        shape=vars(shape) | {"label": shape.label},
        sizes=sizes,
        path="new",
        workers=plan.rss_workers,
        generation_s=made["seconds"],
        generation_processes=made["processes"],
        source_bytes=made["bytes"],
        rows=rows,
        fits=fits,
    )
