"""The old spelling `python -m transmed.explain`: runs `transmed explain` (transmed/commands/explain.py)."""

from transmed.commands import explain
from transmed.commands._common import run_main

if __name__ == "__main__":
    run_main(explain.main)
