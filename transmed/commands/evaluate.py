"""Evaluate a checkpoint: transmed evaluate --checkpoint FILE [--split valid|test] [--out DIR] [key=value ...]

Writes metrics.json (95% bootstrap intervals), predictions.csv, the plots and MODEL_CARD.md under
--out (default: {run dir}/eval-{split}). Overrides such as data.root=... apply on top of the
checkpoint's own config.
"""

from __future__ import annotations

from typing import Optional, Sequence

from ._common import add_bootstrap, add_overrides, bootstrap_count, parser_for


def main(argv: Optional[Sequence[str]] = None, prog: Optional[str] = None) -> None:
    parser = parser_for(__doc__, prog)
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--split", default="valid", choices=["train", "valid", "test"])
    parser.add_argument("--out", default=None, help="output folder (default: {run dir}/eval-{split})")
    add_bootstrap(parser)
    add_overrides(parser)
    args = parser.parse_intermixed_args(argv)
    bootstrap = bootstrap_count(args.bootstrap)

    from ..evaluation.evaluate import evaluate_checkpoint  # torch: after the arguments are checked

    out = evaluate_checkpoint(args.checkpoint, args.split, args.out, args.overrides, bootstrap)
    print(f"evaluation written to {out}")
