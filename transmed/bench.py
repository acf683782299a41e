"""The old spelling `python -m transmed.bench`: runs `transmed bench` (transmed/commands/bench.py)."""

from transmed.commands import bench
from transmed.commands._common import run_main

if __name__ == "__main__":
    run_main(bench.main)
