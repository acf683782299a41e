"""Train a model: python train.py --config configs/knee.yaml [key=value ...]"""

import argparse
import os

from transmed.cli import add_overrides, run_main
from transmed.config import config_from_cli
from transmed.engine import train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", required=True, help="YAML config file")
    add_overrides(parser)
    args = parser.parse_intermixed_args()
    run_dir = train(config_from_cli(args.config, args.overrides))
    if os.environ.get("RANK", "0") == "0":  # under torchrun every process returns here
        print(f"run written to {run_dir}")


if __name__ == "__main__":
    run_main(main)
