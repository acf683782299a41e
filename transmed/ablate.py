"""The old spelling `python -m transmed.ablate`: runs `transmed ablate` (transmed/commands/ablate.py)."""

from transmed.commands import ablate
from transmed.commands._common import run_main

if __name__ == "__main__":
    run_main(ablate.main)
