"""The old spelling `python -m transmed.export --checkpoint F --out F.safetensors`: runs `transmed export`
(transmed/commands/export.py), whose --format defaults to safetensors."""

from transmed.commands import export
from transmed.commands._common import run_main

if __name__ == "__main__":
    run_main(export.main)
