"""The spelling `python -m transmed.weights import ...`: runs `transmed weights` (transmed/commands/weights.py)."""

from transmed.commands import weights
from transmed.commands._common import run_main

if __name__ == "__main__":
    run_main(weights.main)
