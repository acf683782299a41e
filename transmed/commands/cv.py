"""k-fold cross-validation: transmed cv --config FILE [--epoch last|best] [key=value ...]

Trains every fold as {run_name}/fold{k} in one W&B group and writes
{output_dir}/{run_name}/cv_summary.json. `--epoch last` (default) reports each fold's last epoch,
which the validation fold did not choose; `--epoch best` is optimistic.
"""

from __future__ import annotations

import json
from typing import Optional, Sequence

from ..config import load_config
from ._common import add_config, parser_for


def main(argv: Optional[Sequence[str]] = None, prog: Optional[str] = None) -> None:
    parser = parser_for(__doc__, prog)
    parser.add_argument(
        "--epoch", choices=("last", "best"), default="last", help="which epoch's metrics (best: chosen on the same fold, optimistic)"
    )
    add_config(parser)
    args = parser.parse_intermixed_args(argv)
    cfg = load_config(args.config, args.overrides)

    from ..experiments.crossval import run_cv  # torch: after the config is checked

    path = run_cv(cfg, args.epoch)
    summary = json.loads(path.read_text())
    for key, value in summary["mean"].items():
        if value is not None:
            spread = summary["std"][key]
            print(f"{key}: {value:.4f}" + (f" ± {spread:.4f}" if spread is not None else ""))
    print(f"cross-validation summary written to {path}")
