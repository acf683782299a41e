"""Export a checkpoint for deployment: transmed export --checkpoint FILE [--format F] --out PATH

Formats: onnx (one .onnx file, dynamic batch and slice axes, checked with ONNX Runtime; its
metadata_props carry labels, modalities and preprocessing, so `transmed predict` runs it alone),
torch-export (a .pt2 program from torch.export, reloaded and checked), safetensors (the weights,
config in the metadata; the default), monai-bundle (a MONAI bundle folder that runs with
`python -m monai.bundle run` where transmed is not installed, verified with MONAI's
verify_metadata and verify_net_in_out), hub (a Hugging Face Hub folder: config.json,
model.safetensors, README.md model card; `transmed.load_model(folder)` reads it).

Each export is checked against the PyTorch model on three slice counts and two batch sizes and
kept only within 1e-4 of its logits; the largest difference is printed. An existing --out is
never replaced unless --overwrite is given.
"""

from __future__ import annotations

from typing import Optional, Sequence

from ..deploy import FORMATS, export_checkpoint
from ._common import parser_for


def main(argv: Optional[Sequence[str]] = None, prog: Optional[str] = None) -> None:
    parser = parser_for(__doc__, prog)
    parser.add_argument("--checkpoint", required=True, help="a TransMed checkpoint (runs/<run>/checkpoints/best.pt)")
    parser.add_argument("--format", default="safetensors", metavar="FORMAT", help=f"one of {', '.join(FORMATS)} (default: safetensors)")
    parser.add_argument("--out", required=True, help="output file (onnx, torch-export, safetensors) or folder (monai-bundle, hub)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output (folders: only an earlier export)")
    parser.add_argument("--card", default=None, help="model card to ship (hub, monai-bundle); default: the checkpoint's evaluation card")
    parser.add_argument("--device", default="cpu", help="device to trace and check on (default: cpu)")
    parser.add_argument("--no-check", dest="check", action="store_false", help="skip the parity check against PyTorch")
    args = parser.parse_args(argv)
    report = export_checkpoint(
        args.checkpoint, args.format, args.out, overwrite=args.overwrite, check=args.check, card=args.card, device=args.device
    )
    print(report.summary())
