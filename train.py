"""Train a model: python train.py --config configs/knee.yaml [key=value ...] (same as `transmed train`)."""

from transmed.commands import train
from transmed.commands._common import run_main

if __name__ == "__main__":
    run_main(train.main)
