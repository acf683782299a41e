"""Train a model: transmed train --config configs/knee.yaml [key=value ...]

Also `python train.py --config knee.yaml`, and under torchrun. Writes the run files under
{output_dir}/{run_name}/ (docs/architecture.md lists them).
"""

from __future__ import annotations

import os
from typing import Optional, Sequence

from ..config import load_config
from ..engine import train
from ._common import add_config, parser_for


def main(argv: Optional[Sequence[str]] = None, prog: Optional[str] = None) -> None:
    parser = parser_for(__doc__, prog)
    add_config(parser)
    args = parser.parse_intermixed_args(argv)
    run_dir = train(load_config(args.config, args.overrides))
    if os.environ.get("RANK", "0") == "0":  # under torchrun every process returns here
        print(f"run written to {run_dir}")
