"""Check the data before training: transmed inspect --config FILE --out DIR [--n N] [--save-arrays] [key=value ...]

Prints studies per split, label balance, slice counts and voxel spacings per modality; writes a
montage per study ({out}/{study_id}.png: one row per modality, after preprocessing, without
augmentation) and with --save-arrays the (M, S, H, W) arrays the model receives.
"""

from __future__ import annotations

from typing import Optional, Sequence

from ..config import load_config
from ._common import add_config, parser_for


def main(argv: Optional[Sequence[str]] = None, prog: Optional[str] = None) -> None:
    parser = parser_for(__doc__, prog)
    parser.add_argument("--out", required=True, help="folder for the montages (and arrays)")
    parser.add_argument("--n", type=int, default=4, help="how many studies to draw")
    parser.add_argument("--save-arrays", action="store_true", help="also write {study_id}.npy, (M, S, H, W) float32")
    add_config(parser)
    args = parser.parse_intermixed_args(argv)
    if args.n < 0:
        parser.error("--n must be 0 or more")
    cfg = load_config(args.config, args.overrides)

    from ..data.inspection import inspect  # MONAI: after the config is checked

    inspect(cfg, args.out, args.n, args.save_arrays)
