"""Explain one study: transmed explain --checkpoint FILE --study ID [--split S] [--out DIR] [--target NAME] [key=value ...]

Writes the class-token attention rollout per modality and slice (attention.png), a per-slice
Grad-CAM over the CNN stem per target (gradcam-NAME.png) and the numbers behind them (explain.json).
"""

from __future__ import annotations

from typing import Optional, Sequence

from ._common import add_overrides, parser_for


def main(argv: Optional[Sequence[str]] = None, prog: Optional[str] = None) -> None:
    parser = parser_for(__doc__, prog)
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--study", required=True, help="study id as in the manifest (e.g. 0200)")
    parser.add_argument("--split", default=None, help="split holding the study (default: searched in valid, test, train)")
    parser.add_argument("--out", default=None, help="output folder (default: {run dir}/explain-{study})")
    parser.add_argument(
        "--target",
        action="append",
        default=None,
        help="task or class to explain with Grad-CAM (repeatable; default: every task, or the predicted class)",
    )
    add_overrides(parser)
    args = parser.parse_intermixed_args(argv)

    from ..evaluation.attribution import explain_study  # torch: after the arguments are parsed

    out = explain_study(args.checkpoint, args.study, args.split, args.out, args.overrides, args.target)
    print(f"explanation written to {out}")

