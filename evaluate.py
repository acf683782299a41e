"""Evaluate a checkpoint: python evaluate.py --checkpoint FILE [--split valid|test] [--out DIR] [key=value ...]
(same as `transmed evaluate`)."""
from transmed.commands import run_alias

run_alias(__name__, __file__)
