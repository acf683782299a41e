"""Evaluate a checkpoint: python evaluate.py --checkpoint FILE [--split valid|test] [--out DIR] [key=value ...]
(same as `transmed evaluate`)."""

from transmed.commands import evaluate
from transmed.commands._common import run_main

if __name__ == "__main__":
    run_main(evaluate.main)
