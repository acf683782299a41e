"""Seed studies: transmed study FILE [--base CONFIG] [--group NAME] [--quick] [--bootstrap N] [key=value ...]

FILE is a study (configs/studies/depth.yaml, modes.yaml, uap.yaml, stepwise.yaml, fusion.yaml, semi.yaml; a bare
name such as studies/depth.yaml is looked up in configs/): a paper's claim and the runs that test it
on any config (the file's base, or --base). Every run trains as in `transmed ablate`, once per
training seed (the file's `seeds`: 3 by default, 1 with --quick), in one W&B group; the study writes
{output_dir}/{group}/report.md (each claim next to what was measured: the paired per-seed difference
with a 95% interval over seeds and studies, holds, does not hold, or inconclusive where the interval
holds 0; the per-run and per-seed tables) with its PNGs, and comparison.{csv,md,png}.

--quick adds the file's quick settings (few epochs, one seed: minutes on a CPU) and writes to
{group}-quick. key=value applies to every run; NAME:key=value to the run (or role) NAME only, e.g.
intermediate:data.root=/data/other. Run again with train.resume=auto to finish interrupted runs; a study whose runs
exist stops before training unless train.resume=auto or overwrite=true is given.
"""

from __future__ import annotations

from collections.abc import Sequence

from ._common import add_bootstrap, add_overrides, bootstrap_count, fail, parser_for


def main(argv: Sequence[str] | None = None, prog: str | None = None) -> None:
    parser = parser_for(__doc__, prog)
    parser.add_argument("file", help="study YAML (configs/studies/*.yaml)")
    parser.add_argument("--base", default=None, help="config file every run starts from (replaces the file's base)")
    parser.add_argument("--group", default=None, help="W&B group and output folder name (replaces the file's group; --quick adds -quick)")
    parser.add_argument("--quick", action="store_true", help="the file's quick settings: short runs for a CPU")
    parser.add_argument(
        "--seeds", default=None, help="training seeds per run: a count (from the base config's seed) or a list such as 0,1,2 (default: the file's; 3, or 1 with --quick)"
    )
    add_bootstrap(parser, "the AUC intervals")
    add_overrides(parser)
    args = parser.parse_intermixed_args(argv)  # options may come after the overrides
    seeds = None
    if args.seeds is not None:
        try:
            seeds = [int(v) for v in args.seeds.split(",")] if "," in args.seeds else int(args.seeds)
        except ValueError:
            parser.error(f"--seeds: expected a count or a comma-separated list of integers, got {args.seeds!r}")
    from ..experiments.studies import run_study  # the library after the arguments: --help starts fast

    out_dir, frame = run_study(args.file, args.overrides, args.base, args.group, args.quick, bootstrap_count(args.bootstrap), seeds)
    print((out_dir / "report.md").read_text())
    failed = int((frame["status"] != "ok").sum())
    if failed:
        fail(f"{failed} of {len(frame)} runs failed; see {out_dir / 'report.md'}")
    print(f"report written to {out_dir / 'report.md'}")
