"""Benchmark: transmed bench [--quick] [--device cpu|cuda] [--sections loader,rss] [options]

What a training step costs, where the time goes, how it scales, and what the loader delivers (old data
path next to new); writes the run's JSON (default benchmarks/{device}-{mode}.json) and renders
BENCHMARKS.md from every JSON run in that folder. Also `python -m transmed.bench`.
"""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path
from typing import Optional, Sequence

from ._common import parser_for


def _names(text: str) -> list[str]:
    return [name.strip() for name in text.split(",") if name.strip()]


def _sizes(text: str) -> list[int]:
    try:
        return [int(size) for size in _names(text)]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated study counts, e.g. 100,300,1130, got {text!r}") from None


def main(argv: Optional[Sequence[str]] = None, prog: Optional[str] = None) -> None:
    from ..experiments.benchmark import SECTIONS

    parser = parser_for(__doc__, prog or "transmed bench")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="CPU-sized model shape, small loader set, no RSS scale (minutes on 2 cores)")
    mode.add_argument("--smoke", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--device", choices=("cpu", "cuda"), default=None, help="default: cuda when available, else cpu")
    parser.add_argument("--sections", type=_names, default=None, help=f"comma-separated, only these: {','.join(SECTIONS)}")
    parser.add_argument(
        "--models",
        type=_names,
        default=None,
        help="comma-separated models for the throughput table (default: TransMed tiny, small and the baselines)",
    )
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's own choice, one per core)")
    parser.add_argument("--rss-sizes", type=_sizes, default=None, help="study counts of the RSS scale (default 100,300,1130)")
    parser.add_argument("--work-dir", type=Path, default=None, help="where synthetic data and caches are written (default: the temp dir)")
    parser.add_argument("--out", type=Path, default=None, help="this run's JSON (default: benchmarks/{device}-{mode}[-{sections}].json)")
    parser.add_argument("--md-out", type=Path, default=Path("BENCHMARKS.md"), help="the Markdown file rendered from all runs next to --out")
    parser.add_argument(
        "--render", action="store_true", help="measure nothing: re-render --md-out from the JSON runs in benchmarks/ (or --out's folder)"
    )
    args = parser.parse_args(argv)

    from ..experiments.benchmark import run_bench, write_markdown

    if args.render:
        folder = args.out.parent if args.out else Path("benchmarks")
        write_markdown(folder, args.md_out)
        print(f"[bench] rendered {args.md_out} from {folder}/*.json")
        return
    mode = "smoke" if args.smoke else "quick" if args.quick else "full"
    flags = [f"--{mode}"] if mode != "full" else []
    for flag, value in (("--device", args.device), ("--threads", args.threads)):
        flags += [flag, str(value)] if value else []
    for flag, value in (("--sections", args.sections), ("--models", args.models), ("--rss-sizes", args.rss_sizes)):
        flags += [flag, ",".join(map(str, value))] if value else []
    command = shlex.join(["transmed", "bench", *flags])
    result, out = run_bench(
        mode, args.device, args.models, args.sections, args.threads, args.rss_sizes, args.out, args.md_out, args.work_dir, command
    )
    print(f"[bench] {result['wall_s']:.0f} s; wrote {out} and {args.md_out}")
