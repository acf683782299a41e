"""Train a model: transmed train --config configs/knee.yaml [key=value ...]

Also `python train.py --config knee.yaml`, and under torchrun. Writes the run files under
{output_dir}/{run_name}/ (docs/architecture.md lists them). Ctrl-C stops with the command that resumes the run.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional, Sequence

from omegaconf import DictConfig

from ..config import load_config
from ._common import add_config, parser_for


def main(argv: Optional[Sequence[str]] = None, prog: Optional[str] = None) -> None:
    parser = parser_for(__doc__, prog)
    add_config(parser)
    args = parser.parse_intermixed_args(argv)
    cfg = load_config(args.config, args.overrides)  # a config error stops here, before torch is imported

    from ..engine import train

    main_process = os.environ.get("RANK", "0") == "0"  # under torchrun every process returns here
    try:
        run_dir = train(cfg)
    except KeyboardInterrupt:
        raise KeyboardInterrupt(interrupted(cfg) if main_process else "") from None
    if main_process:
        print(f"run written to {run_dir}")
        print(best_line(run_dir))


def best_line(run_dir: Path) -> str:
    """The run's last line: its best validation AUC, the epoch that gave it and the checkpoint holding it."""
    best = json.loads((run_dir / "summary.json").read_text())["best"]
    auc = "n/a" if best.get("val/auc") is None else f"{best['val/auc']:.4f}"  # None: NaN, a task without both classes
    return f"best val/auc {auc} at epoch {best['epoch']}: {run_dir / 'checkpoints' / 'best.pt'}"


def interrupted(cfg: DictConfig) -> str:
    """The one line Ctrl-C leaves: how far the run got and the command that continues it (`train.resume=auto`
    reads `last.pt`; the run's own config.yaml holds its run_name and output_dir)."""
    run_dir = Path(cfg.output_dir) / cfg.run_name
    if not (run_dir / "config.yaml").is_file():
        return "interrupted before the run started; nothing was written"
    metrics = run_dir / "metrics.jsonl"
    done = len(metrics.read_text().splitlines()) if metrics.is_file() else 0
    saved = f"epochs 1-{done} saved" if done > 1 else "epoch 1 saved" if done == 1 else "no epoch finished"
    return (
        f"interrupted in epoch {done + 1} of {cfg.train.epochs} ({saved}); resume with: "
        f"transmed train --config {run_dir / 'config.yaml'} train.resume=auto"
    )
