"""Train a model: transmed train --config configs/knee.yaml [key=value ...]

Also `python train.py --config knee.yaml`, and under torchrun. Writes the run files under
{output_dir}/{run_name}/ (docs/architecture.md lists them). Ctrl-C stops with the command that resumes the run.
"""

from __future__ import annotations

import json
import os
import shlex
from pathlib import Path
from typing import Optional, Sequence

from omegaconf import DictConfig

from ..config import load_config
from ..core.errors import TransMedError
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
    """The one line Ctrl-C leaves: the last epoch saved and the command that continues the run (`train.resume=auto`
    reads `last.pt`; the run's own config.yaml holds its run_name and output_dir)."""
    run_dir = Path(cfg.output_dir) / cfg.run_name
    if not (run_dir / "config.yaml").is_file():
        return "interrupted before the run started; nothing was written"
    saved = _saved_epoch(run_dir / "checkpoints" / "last.pt")
    where = f"in epoch {saved + 1} of {cfg.train.epochs}" if saved < cfg.train.epochs else "after the last epoch"
    done = "no epoch saved yet" if saved == 0 else "epoch 1 saved" if saved == 1 else f"epochs 1-{saved} saved"
    config = shlex.quote(str(run_dir / "config.yaml"))
    return f"interrupted {where} ({done}); resume with: transmed train --config {config} train.resume=auto"


def _saved_epoch(last: Path) -> int:
    """The epoch `last.pt` holds (where `train.resume=auto` continues), 0 without one."""
    from ..core.checkpoint import load_checkpoint

    try:
        return int(load_checkpoint(last)["epoch"]) if last.is_file() else 0
    except TransMedError:
        return 0
