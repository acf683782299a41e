"""Ablations: transmed ablate FILE [--base CONFIG] [--group NAME] [key=value ...]

FILE is YAML:

    base: configs/knee.yaml          # the config every run starts from (--base replaces it)
    group: knee-finetune-depth       # W&B group and output folder (--group replaces it)
    grid:                            # key -> values; several keys make a product
      model.trainable_blocks: [0, 1, 2, 3, 4, all]

Each run is {output_dir}/{group}/{run}/; the comparison is {output_dir}/{group}/comparison.{csv,md,png}.
A failed run is a row with its error and does not stop the others; `train.resume=auto` finishes
interrupted runs and keeps finished ones.
"""

from __future__ import annotations

from typing import Optional, Sequence

from ..experiments.ablation import run_ablation
from ._common import add_bootstrap, add_overrides, bootstrap_count, fail, parser_for


def main(argv: Optional[Sequence[str]] = None, prog: Optional[str] = None) -> None:
    parser = parser_for(__doc__, prog)
    parser.add_argument("file", help="ablation YAML (base, group, grid)")
    parser.add_argument("--base", default=None, help="config file every run starts from (replaces the file's base)")
    parser.add_argument("--group", default=None, help="W&B group and output folder name (replaces the file's group)")
    add_bootstrap(parser)
    add_overrides(parser)
    args = parser.parse_intermixed_args(argv)  # options may come after the overrides
    out_dir, frame = run_ablation(args.file, args.overrides, args.base, args.group, bootstrap_count(args.bootstrap))
    print((out_dir / "comparison.md").read_text())
    failed = int((frame["status"] != "ok").sum())
    if failed:
        fail(f"{failed} of {len(frame)} runs failed; see {out_dir / 'comparison.md'}")
    print(f"comparison written to {out_dir}")
