"""The old spelling `python -m transmed.predict`: runs `transmed predict` (transmed/commands/predict.py)."""

from transmed.commands import predict
from transmed.commands._common import run_main

if __name__ == "__main__":
    run_main(predict.main)
