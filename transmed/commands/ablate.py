"""Ablations: transmed ablate FILE [--base CONFIG] [--group NAME] [--sweep OUT.yaml] [key=value ...]

FILE is YAML:

    base: configs/knee.yaml          # the config every run starts from (--base replaces it)
    group: knee-backbone             # W&B group and output folder (--group replaces it)
    grid:                            # key -> values; several keys make a product
      model.backbone: [resnet18, resnet34, convnext_tiny]

Each run is {output_dir}/{group}/{run}/; the comparison is {output_dir}/{group}/comparison.{csv,md,png}.
A failed run is a row with its error and does not stop the others; `train.resume=auto` finishes
interrupted runs and keeps finished ones.

--sweep OUT.yaml trains nothing: it writes FILE's grid as a W&B grid sweep of train.py, for
`wandb sweep OUT.yaml` then `wandb agent ENTITY/PROJECT/SWEEP_ID` from the repository root. FILE may
also be a study file (configs/studies/*.yaml): each run is one point, its seeds a `seed` parameter.
"""

from __future__ import annotations

from typing import Optional, Sequence

from ._common import add_bootstrap, add_overrides, bootstrap_count, fail, parser_for


def main(argv: Optional[Sequence[str]] = None, prog: Optional[str] = None) -> None:
    parser = parser_for(__doc__, prog)
    parser.add_argument("file", help="ablation YAML (base, group, grid); with --sweep also a study YAML")
    parser.add_argument("--base", default=None, help="config file every run starts from (replaces the file's base)")
    parser.add_argument("--group", default=None, help="W&B group and output folder name (replaces the file's group)")
    parser.add_argument("--sweep", default=None, metavar="OUT.yaml", help="write the grid as a W&B sweep file instead of training")
    add_bootstrap(parser)
    add_overrides(parser)
    args = parser.parse_intermixed_args(argv)  # options may come after the overrides
    if args.sweep:
        from ..experiments.sweep import write_sweep

        sweep = write_sweep(args.file, args.sweep, args.overrides, args.base, args.group)
        print(f"W&B sweep of {len(sweep['parameters'])} parameter(s) written to {args.sweep}; run: wandb sweep {args.sweep}")
        return
    from ..experiments.ablation import run_ablation

    out_dir, frame = run_ablation(args.file, args.overrides, args.base, args.group, bootstrap_count(args.bootstrap))
    print((out_dir / "comparison.md").read_text())
    failed = int((frame["status"] != "ok").sum())
    if failed:
        fail(f"{failed} of {len(frame)} runs failed; see {out_dir / 'comparison.md'}")
    print(f"comparison written to {out_dir}")
