"""Evaluate a checkpoint: python evaluate.py --checkpoint FILE [--split valid|test] [--out DIR] [key=value ...]"""

import argparse

from transmed.cli import add_overrides, run_main
from transmed.evaluation.evaluate import evaluate_checkpoint


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--split", default="valid", choices=["train", "valid", "test"])
    parser.add_argument("--out", default=None, help="output folder (default: {run dir}/eval-{split})")
    parser.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for the 95%% intervals")
    add_overrides(parser)
    args = parser.parse_intermixed_args()
    out = evaluate_checkpoint(args.checkpoint, args.split, args.out, args.overrides, args.bootstrap)
    print(f"evaluation written to {out}")


if __name__ == "__main__":
    run_main(main)
