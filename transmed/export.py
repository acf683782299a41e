"""Export a checkpoint's weights to safetensors: python -m transmed.export --checkpoint FILE --out FILE.safetensors"""

import argparse

from .cli import run_main
from .engine.checkpoint import export_safetensors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    print(f"weights written to {export_safetensors(args.checkpoint, args.out)}")


if __name__ == "__main__":
    run_main(main)
