"""The old spelling `python -m transmed.compare`: runs `transmed compare` (transmed/commands/compare.py)."""

from transmed.commands import compare
from transmed.commands._common import run_main

if __name__ == "__main__":
    run_main(compare.main)
