"""The old spelling `python -m transmed.synthetic`: runs `transmed synthetic` (transmed/commands/synthetic.py)."""

from transmed.commands import synthetic
from transmed.commands._common import run_main

if __name__ == "__main__":
    run_main(synthetic.main)
