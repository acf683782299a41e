"""BENCHMARKS.md from the benchmark's JSON runs (`benchmarks/*.json`), each under its own device line.

Every table goes through `transmed.core.tables.markdown_table`. Times are medians of interleaved
rounds with their range; a verdict against a goal is only given where that range is narrower
than the margin to the goal (`measure.verdict`).
"""

from __future__ import annotations

import contextlib
import json
import math
from pathlib import Path
from typing import Any, Optional, Sequence

from ...core.io import atomic_write, write_json
from ...core.tables import markdown_table
from .loader import rss_fits
from .measure import shared
from .plan import FUSION_GOAL, Plan

SCHEMA = 2
MIB, GIB = 2**20, 2**30


def _ok(value: Any) -> bool:
    return value is not None and not (isinstance(value, float) and math.isnan(value))


def num(value: Optional[float], digits: int = 1) -> str:
    return f"{value:,.{digits}f}" if _ok(value) else ""


def span(low: Optional[float], high: Optional[float], digits: int = 2) -> str:
    """A range of rounds, `low–high`."""
    return f"{low:,.{digits}f}–{high:,.{digits}f}" if _ok(low) and _ok(high) else ""


def pct(value: Optional[float]) -> str:
    return f"{100 * value:.0f}%" if _ok(value) else ""


def _mib(value: Optional[float]) -> Optional[float]:
    """Bytes in MiB; a missing value stays missing (an empty cell)."""
    return value / MIB if _ok(value) else None


def _each(spec: str, *columns: str) -> dict[str, str]:
    """The same format spec for several columns."""
    return dict.fromkeys(columns, spec)


def _filled(rows: Sequence[dict]) -> list[str]:
    """The columns of `rows` that have a value in at least one row (an optional measurement left out makes none)."""
    return [c for c in (rows[0] if rows else {}) if any(_ok(row[c]) and row[c] != "" for row in rows)]


def _section(title: str, intro: str, table: str) -> list[str]:
    """A `###` section of a run: its intro and its table, each followed by a blank line."""
    return [f"### {title}", "", intro, "", table, ""]


VERDICT_WORDS = {
    "meets": "meets",
    "misses": "misses",
    "undecided": "no verdict: the rounds spread wider than the margin to",
}


def _verdict_text(verdict: str, goal: str) -> str:
    return f"{VERDICT_WORDS.get(verdict, verdict)} the goal ({goal})"


def _shape_line(shapes: dict, name: str) -> str:
    s = shapes[name]
    depth = f", transformer depth {s['depth']}" if s.get("depth") is not None else ""
    size = f"batch {s['batch']} x {s['modalities']} modalities x {s['slices']} slices x {s['image_size']}² px"
    return f"`{name}`: {size}, backbone {s['backbone']}{depth}"


def load_line(result: dict) -> str:
    """The load average against the cores at start and end, and what other processes used in between."""
    m, c = result["machine"], result.get("contention") or {}
    start, end = c.get("load_start", m.get("load_average")), c.get("load_end", m.get("load_average_end"))
    text = f"1-minute load average {num(start)} at the start and {num(end)} at the end, on {m['cpu_cores']} cores"
    if c.get("others_cores") is not None:
        text += (
            f"; other processes kept {c['others_cores']:.2f} cores busy on average during the run (this run used "
            f"{c['own_cores']:.2f}; hypervisor steal {c['steal_cores']:.2f})"
        )
    if shared(c):
        return text + ": the machine was shared, so timings are slower and noisier than on a quiet one."
    return text + "."


def fusion_note(row: dict) -> str:
    """What the measured fusion overhead is made of and what bounds it, in words."""
    cpu = f" (CPU-time ratio {row['cpu_ratio']:.3f})" if _ok(row.get("cpu_ratio")) else ""
    verdict = _verdict_text(row["verdict"], f"at most {row.get('goal', FUSION_GOAL)}")
    return (
        f"{row['model']} on `{row['shape']}`: ratio {row['ratio']:.3f} (rounds {span(row['ratio_low'], row['ratio_high'], 3)}){cpu}: "
        f"{verdict}. Over the stem's {row['stem_ms']:.0f} ms, tokens, embeddings, scatter and head add "
        f"{100 * row['tokens_share']:+.1f}% and the transformer encoder {100 * row['encoder_share']:+.1f}%. What bounds it is the "
        f"encoder's work: its matmuls are {100 * (row['flop_ratio'] - 1):.1f}% of the stem's convolution FLOPs at this shape "
        f"(FLOP ratio {row['flop_ratio']:.3f}), and AdamW updates {row['params_m'] - row['stem_params_m']:.1f}M parameters next "
        f"to the stem's {row['stem_params_m']:.1f}M."
    )


def render_throughput(result: dict) -> list[str]:
    by_key: dict[tuple, dict] = {}
    for row in result["throughput"]:
        by_key.setdefault((row["shape"], row["model"], row["precision"]), {"params_m": row["params_m"]})[row["mode"]] = row
    cuda = result["machine"]["device_type"] == "cuda"
    rows = []
    for (shape, model, precision), parts in by_key.items():
        train, infer = parts.get("train", {}), parts.get("infer", {})
        rows.append(
            {
                "shape": shape,
                "model": model,
                "params (M)": parts["params_m"],
                "precision": precision,
                "train studies/s": train.get("studies_per_s"),
                "train spread": pct(train.get("spread")),
                "train vs late fusion": f"{train['vs_late_fusion']:.2f}x" if _ok(train.get("vs_late_fusion")) else "",
                "train peak MiB": train.get("peak_mib"),
                "infer studies/s": infer.get("studies_per_s"),
                "infer spread": pct(infer.get("spread")),
                "infer peak MiB": infer.get("peak_mib"),
                "train total MiB": train.get("total_mib"),
            }
        )
    columns = list(rows[0]) if rows else ["shape"]
    if not cuda:
        columns.remove("train total MiB")
    formats = {"params (M)": ".1f", **_each(",.2f", "train studies/s", "infer studies/s")}
    formats.update(_each(",.0f", "train peak MiB", "infer peak MiB", "train total MiB"))
    return _section(
        "Throughput",
        "Train step (forward, loss, backward, clipping, AdamW) and inference studies/s at the median round; spread: "
        "(slowest - fastest round) / median. `vs late fusion`: late fusion's step time over this model's, round by round "
        "(above 1: faster than late fusion).",
        markdown_table(rows, columns, formats),
    )


def render_fusion(result: dict) -> list[str]:
    rows = [
        {
            "shape": r["shape"],
            "model": r["model"],
            "precision": r["precision"],
            "slice-images/step": r["slice_images"],
            "stem ms": r["stem_ms"],
            "no encoder ms": r["no_encoder_ms"],
            "TransMed ms": r["full_ms"],
            "ratio": f"**{r['ratio']:.3f}**",
            "rounds": span(r["ratio_low"], r["ratio_high"], 3),
            "CPU-time ratio": r.get("cpu_ratio"),
            "FLOP ratio": r["flop_ratio"],
            "verdict": r["verdict"],
            "stem peak MiB": r["stem_peak_mib"],
            "TransMed peak MiB": r["full_peak_mib"],
        }
        for r in result["fusion"]
    ]
    formats = _each(",.0f", "stem ms", "no encoder ms", "TransMed ms", "stem peak MiB", "TransMed peak MiB")
    formats.update(_each(".3f", "CPU-time ratio", "FLOP ratio"))
    rounds = result["fusion"][0].get("rounds", "") if result["fusion"] else ""
    return _section(
        "Fusion overhead",
        "A TransMed train step (forward, loss, backward, clipping, AdamW) divided by the same stem's train step alone on the "
        "same slice-images (trivial loss on pooled features, AdamW over the stem). `no encoder` is TransMed with "
        f"`model.depth=0`. The three run interleaved, {rounds} rounds; the ratio is taken within each round, and the table "
        "gives its median and its lowest and highest round. CPU-time ratio: the same with process CPU time (CPU runs; not "
        "inflated by waiting for the cores). FLOP ratio: matmul and convolution FLOPs of the two steps, the ratio if every "
        f"FLOP cost the same. Goal: at most {FUSION_GOAL}; no verdict where the rounds spread wider than the margin to it.",
        markdown_table(rows, formats=formats),
    ) + [*(f"- {fusion_note(r)}" for r in result["fusion"]), ""]


def render_scaling(result: dict) -> list[str]:
    rows = [
        {
            "shape": r["shape"],
            "slices": r["slices"],
            "modalities": r["modalities"],
            "slice-images/step": r["slice_images"],
            "tokens/study": r["tokens"],
            "stem ms": r["stem_ms"],
            "TransMed ms": r["full_ms"],
            "ratio": r["ratio"],
            "rounds": span(r.get("ratio_low"), r.get("ratio_high"), 3),
            "stem peak MiB": r["stem_peak_mib"],
            "TransMed peak MiB": r["full_peak_mib"],
        }
        for r in result["scaling"]
    ]
    formats = {"ratio": ".3f", **_each(",.0f", "stem ms", "TransMed ms", "stem peak MiB", "TransMed peak MiB")}
    return _section(
        "Scaling",
        "TransMed tiny and its stem alone (train step), against slices per modality and number of modalities: medians of "
        "interleaved rounds, the ratio within each round. Tokens per study = 1 + modalities x slice groups x grid cells; the "
        "stem's cost grows with the slice-images, attention's with tokens².",
        markdown_table(rows, formats=formats),
    )


def render_loader(result: dict) -> list[str]:
    data = result["loader"]
    rows = [
        {
            "path": f"{r['path']}: {r['label']}",
            "workers": r["workers"] or "0 (main process)",
            "cache dtype": r.get("dtype"),
            "MiB/study in memory": _mib(r.get("bytes_memory")),
            "MiB/study on disk": _mib(r.get("bytes_disk")),
            "cache fill studies/s": r.get("fill_studies_per_s"),
            "studies/s": r["studies_per_s"],
            "rounds": span(r.get("studies_per_s_low"), r.get("studies_per_s_high"), 1),
            "per worker": r.get("per_worker", r["studies_per_s"] if not r["workers"] else None),
            "loader only": r.get("loader_only_studies_per_s"),
            "device work ms/study": r.get("device_ms_per_study"),
            "workers' scaling": pct(r.get("scaling_efficiency")),
            "x train": r.get("vs_train"),
        }
        for r in data["rows"]
    ]
    formats = _each(",.1f", "MiB/study in memory", "MiB/study on disk", "cache fill studies/s", "studies/s", "per worker", "loader only")
    formats.update({"device work ms/study": ",.0f", "x train": ",.1f"})
    c, e, shape = data["comparison"], data["extrapolation"], data["shape"]
    device = "GPU" if result["machine"]["device_type"] == "cuda" else "CPU"
    return _section(
        "Data loader",
        f"The training loader at the knee shape ({shape['label']}), {data['studies']} synthetic studies in the MRNet layout "
        f"({data['source_bytes_per_study'] / MIB:.1f} MiB of uint8 per study on disk; written in {data['generation_s']:.0f} s by "
        f"{data['generation_processes']} processes), with `data.cache_dir` on disk as configs/knee.yaml, built by "
        "`build_dataset`/`build_loader` as training builds them. Old path: `data.cache_dtype=float32 data.augment_on=loader`; "
        "new path: `data.cache_dtype=auto data.augment_on=device`. Studies/s include the device work on each batch, run on "
        f"this run's {device} (`device work`: `to_device`, where a "
        "compact batch becomes float, for the new path in one pass with `augment_batch`), so one worker's studies/s compare like "
        "for like; "
        "`loader only` leaves the device work out: what a loader worker does (on a GPU machine the rest runs on the GPU). "
        "Cache fill: building the dataset (every study preprocessed and written). "
        f"Studies/s: median of {len(data['rows'][0].get('epoch_rounds', [])) or ''} interleaved warm epochs (old, new, old, ...) "
        "on one torch thread (a loader worker's), with the slowest and fastest round.",
        markdown_table(rows, _filled(rows), formats),
    ) + [
        f"- Bytes per cached study, new over old: {c['bytes_ratio']:.3f} in memory"
        + (f", {c['bytes_disk_ratio']:.3f} on disk" if _ok(c.get("bytes_disk_ratio")) else "")
        + f": {_verdict_text(c['bytes_verdict'], 'at most 1/3')}.",
        f"- Studies/s per worker, new over old, with the device work (the new path's batch augmentation) on this run's "
        f"{device}: {c['speed_ratio']:.2f}x "
        f"(rounds {span(c['speed_ratio_low'], c['speed_ratio_high'])}): {_verdict_text(c['speed_verdict'], 'at least 2x')}.",
        f"- The same for a loader worker's own work (`loader only`; the device work on the GPU, as on a GPU machine): "
        f"{c['worker_ratio']:.2f}x (rounds {span(c['worker_ratio_low'], c['worker_ratio_high'])}): "
        f"{_verdict_text(c['worker_verdict'], 'at least 2x')}."
        if _ok(c.get("worker_ratio"))
        else "",
        f"- Extrapolation, not a measurement: a {e['cores']}-core GPU machine with {e['workers']} loader workers (one core for "
        f"the training process), if workers scaled linearly, would load {e['old_studies_per_s']:,.0f} studies/s on the old path "
        f"and {e['new_studies_per_s']:,.0f} on the new one (`loader only` per worker x {e['workers']}; the device work on the GPU)."
        + (
            " Measured scaling of workers on this machine: "
            + ", ".join(f"{k.replace('@', ' path, ')} workers {pct(v)}" for k, v in e["measured_efficiency"].items())
            + " of linear."
            if e.get("measured_efficiency")
            else ""
        ),
        "",
    ]


def render_rss(result: dict) -> list[str]:
    data = result["rss"]
    rows = [
        {
            "studies": r["studies"],
            "cache": "disk (`data.cache_dir`, as knee.yaml)" if r["cache"] == "disk" else "memory (the default)",
            "build s": r["build_s"],
            "epoch s": r["epoch_s"],
            "MiB/study cached": r["bytes_memory"] / MIB,
            "RSS at start MiB": r["base_rss"] / MIB,
            "build peak RSS MiB": _mib(r.get("build_peak_rss")),
            "RSS after build MiB": r["after_build_rss"] / MIB,
            "peak RSS MiB": r["peak_rss"] / MIB,
            "epoch peak RSS MiB": _mib(r.get("epoch_peak_rss")),
            "largest worker peak MiB": _mib(r.get("worker_peak_rss")),
        }
        for r in data["rows"]
    ]
    formats = {"epoch s": ",.1f", "MiB/study cached": ",.2f"}
    formats.update(_each(",.0f", "build s", "RSS at start MiB", "build peak RSS MiB", "RSS after build MiB", "peak RSS MiB"))
    formats.update(_each(",.0f", "epoch peak RSS MiB", "largest worker peak MiB"))
    sizes = "/".join(f"{s:,}" for s in data["sizes"])
    lines = _section(
        "RSS scale",
        f"Peak RSS of the new path's training loader (dataset build, then one epoch with {data['workers']} loader workers"
        f"{' as configs/knee.yaml' if data['workers'] == Plan.rss_workers else ''}) over {sizes} synthetic studies ({data['shape']['label']}), each size in a fresh process "
        "(`ru_maxrss` of that process: the one holding the cache; its workers' largest apart). One set of "
        f"{data['sizes'][-1]:,} studies ({data['source_bytes'] / GIB:.2f} GiB) was generated for the run in "
        f"{data['generation_s']:.0f} s by {data['generation_processes']} processes and deleted after. With the disk cache the "
        "cached studies live in files and RSS should stay flat; with the memory cache it should grow by the bytes per cached "
        "study times the studies, and no faster. The batches in flight (workers x 2 prefetched, in shared memory) add a "
        "constant once there are enough studies to fill them; the epoch moves batches only (no device work).",
        markdown_table(rows, _filled(rows), formats),
    )
    for fit in rss_fits(data["rows"]):  # from the rows, not the stored fits: --render re-reads older JSON runs too
        per_study = fit["bytes_per_study"]
        others = [
            f"{what} {fit[key] / MIB:,.2f} MiB (x{fit[key] / per_study:.2f})"
            for what, key in (("the build's peak", "build_growth_per_study"), ("RSS after the build", "after_build_growth_per_study"))
            if _ok(fit.get(key))
        ]
        lines.append(
            f"- {fit['cache']} cache: the {fit['measure']} RSS grows {fit['growth_per_study'] / MIB:,.2f} MiB per added study against "
            f"{per_study / MIB:,.2f} MiB cached per study (x{fit['growth_over_bytes']:.2f}): "
            + ("no faster than bytes per study x studies" if fit["verdict"] == "meets" else "faster than bytes per study x studies")
            + (f"; per added study, {' and '.join(others)}." if others else ".")
        )
    return lines + [""]


def render_fast_paths(result: dict) -> list[str]:
    rows = [
        {
            "shape": r["shape"],
            "switch": r["path"],
            "studies/s": r["studies_per_s"],
            "spread": pct(r.get("spread")),
            "speed-up": f"{r['speedup']:.2f}x",
            "rounds": span(r.get("speedup_low"), r.get("speedup_high")),
            "peak MiB": r["peak_mib"],
            "memory vs default": r.get("memory_ratio"),
        }
        for r in result["fast_paths"]
    ]
    return _section(
        "Fast paths",
        "TransMed tiny train step under each switch, against the default at the same shape (speed-up taken round by round: "
        "median and range). Checkpointing the stem as one segment recomputes all its activations at once in backward, so its "
        "peak drops only together with `model.stem_chunk` (one chunk recomputed at a time); `stem_chunk` alone bounds memory "
        "in inference, not in training. In training, BatchNorm stems normalise each chunk with its own statistics (outputs "
        "match the default exactly in eval mode).",
        markdown_table(rows, formats={"studies/s": ",.2f", "peak MiB": ",.0f", "memory vs default": ".2f"}),
    )


def render_train(result: dict) -> list[str]:
    t = result["train"]
    rows = [{"epoch": e["epoch"], "seconds (training)": e["sec"], "studies/s": e["studies_per_s"]} for e in t["epochs"]]
    memory = ""
    if _ok(t.get("gpu_peak_allocated_mib")):
        memory = (
            f" Peak GPU memory over the run: {t['gpu_peak_allocated_mib']:,.0f} MiB allocated, "
            f"{t['gpu_peak_reserved_mib']:,.0f} MiB reserved."
        )
    return _section(
        "Training run",
        f"configs/{t['config']} ({t['model']}, {t['backbone']}, batch {t['batch']}, bf16 {'on' if t['amp'] else 'off'}, compile "
        f"{'on' if t['compile'] else 'off'}, {t['workers']} loader workers) for {len(t['epochs'])} epochs over {t['train_studies']} "
        f"synthetic MRNet-size training studies (validation: {t['valid_studies']}), compact cache (in memory) and augmentation on the device "
        f"(`{' '.join(t['overrides'])}`). Studies/s: training studies over the epoch's training time (validation apart). "
        f"Data written in {t['generation_s']:.0f} s; the run took {t['wall_s']:.0f} s with its cache fill and validation.{memory}",
        markdown_table(rows, formats=_each(",.1f", "seconds (training)", "studies/s")),
    )


RENDERERS = {
    "throughput": render_throughput,
    "fusion": render_fusion,
    "scaling": render_scaling,
    "loader": render_loader,
    "rss": render_rss,
    "fast_paths": render_fast_paths,
    "train": render_train,
}


def render_run(result: dict) -> list[str]:
    """One run's section of BENCHMARKS.md."""
    m = result["machine"]
    threads = m["torch_threads"]
    sections = ", ".join(result.get("sections", []))
    lines = [
        f"## {m['device']}: {result['mode']} run ({sections})",
        "",
        f"`{result['command']}`, {result['started']}, {result['wall_s']:.0f} s wall. torch {m['torch']} ({threads} CPU "
        f"thread{'s' if threads != 1 else ''}), timm {m['timm']}, monai {m['monai']}, Python {m['python']}, {m['platform']}. "
        + load_line(result),
        "",
    ]
    measured = {r.get("shape") for s in ("throughput", "fusion", "scaling", "fast_paths") for r in result.get(s) or []}
    shapes = [name for name in result.get("shapes", {}) if name in measured]
    if shapes:
        lines += [
            "Model shapes: " + "; ".join(_shape_line(result["shapes"], name) for name in shapes) + ".",
            f"Peak memory (MiB) is the {result['memory_method']}.",
            "",
        ]
    for name in result.get("sections", []):
        if result.get(name) is not None and name in RENDERERS:
            lines += RENDERERS[name](result)
    if result.get("skipped"):
        lines += ["Not measured in this run: " + "; ".join(result["skipped"]) + ".", ""]
    return lines


def render(results: Sequence[dict]) -> str:
    """BENCHMARKS.md from runs: CPU runs first, then GPU runs (or a note that none has been made)."""
    order = {"smoke": 0, "quick": 1, "full": 2}
    results = sorted(results, key=lambda r: (r["machine"]["device_type"] != "cpu", order.get(r["mode"], 3), r["started"]))
    lines = [
        "# Benchmarks",
        "",
        "Generated by `transmed bench` (`python -m transmed.bench`) from the JSON runs next to it (`benchmarks/*.json`); do not "
        "edit by hand, re-run instead. `--quick`: the CPU-sized model shape and a small knee-shape loader set; without it the "
        "knee model shape, more rounds, `torch.compile` and the RSS scale are added; `--sections loader,rss` runs only those. "
        "`benchmarks/gpu.sh` makes the GPU runs. Times are medians of interleaved rounds with their range; every number "
        "comes from the run whose device line it stands under.",
        "",
    ]
    for result in results:
        lines += render_run(result)
    if not any(r["machine"]["device_type"] == "cuda" for r in results):
        lines += [
            "## GPU",
            "",
            "No GPU run yet: these files were generated on machines without a GPU, so there are no GPU numbers here. "
            "`benchmarks/gpu.sh` on a GPU machine adds them (the bench on CUDA with bf16 and compile on and off, and a "
            "2-epoch knee-shape training run with the compact cache and augmentation on the device).",
            "",
        ]
    return "\n".join(lines).rstrip("\n") + "\n"


def load_runs(folder: Path) -> list[dict]:
    """Every benchmark run (JSON of this schema) in `folder`."""
    runs = []
    for path in sorted(Path(folder).glob("*.json")):
        with contextlib.suppress(json.JSONDecodeError, UnicodeDecodeError, OSError):
            data = json.loads(path.read_text())
            if isinstance(data, dict) and data.get("schema") == SCHEMA:
                runs.append(data)
    return runs


def write_markdown(folder: Path, md_out: Path) -> None:
    text = render(load_runs(folder))
    atomic_write(md_out, lambda f: f.write(text), mode="w")


def write_report(result: dict, out: Path, md_out: Path) -> None:
    """Writes this run's JSON to `out`, then renders `md_out` from every JSON run in `out`'s folder."""
    write_json(out, result)
    write_markdown(out.parent, md_out)
