"""The old spelling `python -m transmed.cv`: runs `transmed cv` (transmed/commands/cv.py)."""

from transmed.commands import cv
from transmed.commands._common import run_main

if __name__ == "__main__":
    run_main(cv.main)
