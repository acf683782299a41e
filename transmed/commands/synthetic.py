"""Write a synthetic dataset: transmed synthetic ROOT [--format mrnet|nifti] [--fusion] [--unlabelled N] [options]

Knee studies in the MRNet layout (what `data.format: synthetic` generates on first use), or
parotid-like T1/T2 studies in the `nifti` layout. With --fusion no single modality gives every
label (knee: each lesion in one plane; parotid: four types on a 2 x 2 design of T1 and T2 signal),
and ROOT/fusion_bound.json states the best AUC one modality can reach. With --unlabelled N, also N
studies of the same kind without labels in ROOT/unlabelled (for data.unlabelled_root), and the
generator's labels of them in ROOT/unlabelled/synthetic_truth.json, read only to score pseudo-labels.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Optional, Sequence

from ..core.errors import ResultExistsError
from ._common import parser_for


def main(argv: Optional[Sequence[str]] = None, prog: Optional[str] = None) -> None:
    parser = parser_for(__doc__, prog)
    parser.add_argument("root")
    parser.add_argument("--format", choices=("mrnet", "nifti"), default="mrnet")
    parser.add_argument("--num-train", type=int, default=120, help="mrnet: train studies; nifti: all studies")
    parser.add_argument("--num-valid", type=int, default=60)
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--min-slices", type=int, default=16)
    parser.add_argument("--max-slices", type=int, default=32)
    parser.add_argument("--with-split", action="store_true", help="nifti: write a split column")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--fusion", action="store_true", help="labels that need every modality; writes fusion_bound.json")
    parser.add_argument("--unlabelled", type=_count, default=0, metavar="N", help="also N studies without labels in ROOT/unlabelled")
    args = parser.parse_args(argv)
    root = Path(args.root)
    if root.is_file() or root.is_dir() and any(root.iterdir()):
        raise ResultExistsError(f"{root} already exists and is not an empty folder; give a new folder for the synthetic dataset")

    from ..data.synthesis import generate_mrnet, generate_nifti  # torch and MONAI: after the arguments are checked

    if args.format == "nifti":
        generate_nifti(args.root, args.num_train, args.with_split, args.seed, fusion=args.fusion, num_unlabelled=args.unlabelled)
    else:
        generate_mrnet(
            args.root,
            args.num_train,
            args.num_valid,
            args.image_size,
            args.min_slices,
            args.max_slices,
            args.seed,
            fusion=args.fusion,
            num_unlabelled=args.unlabelled,
        )


def _count(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} is not a count (0 or more)")
    return value
