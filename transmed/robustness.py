"""The old spelling `python -m transmed.robustness`: runs `transmed robustness` (transmed/commands/robustness.py)."""

from transmed.commands import robustness
from transmed.commands._common import run_main

if __name__ == "__main__":
    run_main(robustness.main)
