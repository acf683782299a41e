"""Predict one study: transmed predict --checkpoint FILE INPUT... [--json-out FILE] [key=value ...]

One INPUT per modality, in the config's modality order: an .npy stack, a NIfTI file or a DICOM
folder, as far as the checkpoint's data pipeline reads that format. Prints the probabilities as JSON.
Arguments of the form key=value (that are not existing paths) are config overrides.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Optional, Sequence

from ..core.errors import UsageError
from ..core.io import write_json
from ..evaluation.prediction import predict_study
from ._common import parser_for

_OVERRIDE = re.compile(r"^[A-Za-z_][\w.]*=")


def split_overrides(items: Sequence[str]) -> tuple[list[str], list[str]]:
    """(inputs, overrides): an item is an override when it looks like `dotted.key=value` and is no existing path."""
    inputs, overrides = [], []
    for item in items:
        (overrides if _OVERRIDE.match(item) and not Path(item).exists() else inputs).append(item)
    return inputs, overrides


def main(argv: Optional[Sequence[str]] = None, prog: Optional[str] = None) -> None:
    parser = parser_for(__doc__, prog)
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument(
        "items", nargs="+", metavar="INPUT", help="one file or DICOM folder per modality, then optional key=value overrides"
    )
    parser.add_argument("--id", default=None, help="study id in the output (default: the first input's name)")
    parser.add_argument("--threshold", type=float, default=0.5, help="multilabel decision threshold (default 0.5)")
    parser.add_argument("--json-out", default=None, help="also write the JSON to this file")
    args = parser.parse_intermixed_args(argv)
    if not 0 <= args.threshold <= 1:
        raise UsageError(f"--threshold {args.threshold:g} is not a probability; give a value in [0, 1]")
    inputs, overrides = split_overrides(args.items)
    result = predict_study(args.checkpoint, inputs, overrides, args.id, args.threshold)
    if args.json_out:
        write_json(args.json_out, result)
    print(json.dumps(result, indent=2))

