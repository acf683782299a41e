"""The old spelling `python -m transmed.data.inspect`: runs `transmed inspect` (transmed/commands/inspect.py)."""

from transmed.commands import inspect
from transmed.commands._common import run_main

if __name__ == "__main__":
    run_main(inspect.main)
