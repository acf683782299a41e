"""Predict one study: transmed predict --checkpoint FILE INPUT... [--json-out FILE] [key=value ...]

Each INPUT is one file per modality, named (`T1=P003/T1.nii.gz T2=P003/T2.nii.gz`, any order) or
positional (in the config's modality order): an .npy stack, a NIfTI file or a DICOM folder, as far
as the model's data pipeline reads that format. FILE is a TransMed checkpoint or an ONNX file from
`transmed export --format onnx` (run through ONNX Runtime, preprocessed as its metadata says).
Prints the probabilities as JSON, with the file read as each modality. Other arguments of the form
key=value (a dotted key or a top-level config key, and no existing path) are config overrides.
"""

from __future__ import annotations

import json
import re
from dataclasses import MISSING, fields
from pathlib import Path
from typing import Optional, Sequence

from ..core.errors import UsageError
from ._common import parser_for

_ASSIGNMENT = re.compile(r"^([A-Za-z_][\w.\-]*)=(.*)$")


def _top_level_keys() -> set[str]:
    """`seed`, `output_dir`, ...: the config's keys outside its sections (which are built by default factories)."""
    from ..config import Config

    return {f.name for f in fields(Config) if f.default_factory is MISSING}


def split_items(items: Sequence[str]) -> tuple[list[str], dict[str, str], list[str]]:
    """(positional inputs, named inputs {name: path}, overrides).

    An existing path is always an input. `key=value` is an override when the key is dotted
    (`train.device=cpu`) or a top-level config key (`seed=1`); any other `NAME=PATH` names a modality.
    """
    positional, named, overrides = [], {}, []
    top = _top_level_keys()
    for item in items:
        match = _ASSIGNMENT.match(item)
        if match is None or Path(item).exists():
            positional.append(item)
        elif "." in match[1] or match[1] in top:
            overrides.append(item)
        elif match[1] in named:
            raise UsageError(f"modality {match[1]!r} is given twice: {named[match[1]]} and {match[2]}")
        else:
            named[match[1]] = match[2]
    if positional and named:
        raise UsageError(
            f"give every input by name ({' '.join(f'{n}=PATH' for n in named)} ...) or every input in the config's order, "
            f"not both; positional: {positional}"
        )
    return positional, named, overrides


def main(argv: Optional[Sequence[str]] = None, prog: Optional[str] = None) -> None:
    parser = parser_for(__doc__, prog)
    parser.add_argument("--checkpoint", required=True, help="a TransMed checkpoint (best.pt) or an exported .onnx file")
    parser.add_argument(
        "items",
        nargs="+",
        metavar="INPUT",
        help="NAME=PATH per modality (or paths in the config's order), then optional key=value overrides",
    )
    parser.add_argument("--id", default=None, help="study id in the output (default: the first input's name)")
    parser.add_argument("--threshold", type=float, default=0.5, help="multilabel decision threshold (default 0.5)")
    parser.add_argument("--json-out", default=None, help="also write the JSON to this file")
    args = parser.parse_intermixed_args(argv)
    if not 0 <= args.threshold <= 1:
        raise UsageError(f"--threshold {args.threshold:g} is not a probability; give a value in [0, 1]")
    positional, named, overrides = split_items(args.items)
    inputs = named or positional

    from ..core.io import write_json
    from ..deploy.onnx_model import is_onnx, load_onnx
    from ..evaluation.prediction import predict_loaded, predict_study

    if is_onnx(args.checkpoint):
        result = predict_loaded(*load_onnx(args.checkpoint, overrides), inputs, args.id, args.threshold)
    else:
        result = predict_study(args.checkpoint, inputs, overrides, args.id, args.threshold)
    if args.json_out:
        write_json(args.json_out, result)
    print(json.dumps(result, indent=2))
