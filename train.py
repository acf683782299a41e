"""Train a model: python train.py --config configs/knee.yaml [key=value ...] (same as `transmed train`)."""
from transmed.commands import run_alias

run_alias(__name__, __file__)
