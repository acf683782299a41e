"""Explain one study: python -m transmed.explain --checkpoint FILE --study ID [--split S] [--out DIR] [--target NAME] [key=value ...]

Writes the class-token attention rollout per modality and slice (attention.png), a per-slice
Grad-CAM over the CNN stem per target (gradcam-NAME.png) and the numbers behind them (explain.json).
"""

from __future__ import annotations

import argparse
from typing import Optional, Sequence

from transmed.cli import add_overrides, run_main
from transmed.evaluation.evaluate import UnsupportedRequest
from transmed.evaluation.explain import explain_study


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
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
    try:
        out = explain_study(args.checkpoint, args.study, args.split, args.out, args.overrides, args.target)
    except UnsupportedRequest as err:
        parser.error(str(err))
    print(f"explanation written to {out}")


if __name__ == "__main__":
    run_main(main)
