"""What every command shares: config arguments, quiet known warnings, and one line per failure.

A command module's `main(argv, prog)` is: argparse, then one library call. `run_main` runs it so that a
`TransMedError` (bad config, data, checkpoint, run folder, weights: the user's input) prints one
line, `error: ...`, and exits with the error's code (2 for config and usage errors, 1 otherwise);
Ctrl-C prints one line (the command's own, such as how to resume a run) and exits with 130.
"""

from __future__ import annotations

import argparse
import logging
import sys
import warnings
from typing import Callable, NoReturn, Optional

from ..core.errors import ConfigError, TransMedError, UsageError

# Warnings the libraries print on every start that say nothing about the user's run.
KNOWN_HARMLESS = (
    (r".*NvImgCodec.*", UserWarning),  # pydicom/MONAI: the optional nvImageCodec decoder is not installed
    (r".*nvimgcodec.*", UserWarning),
    (r".*cuCIM.*", UserWarning),
    (r".*torch\.cuda\.amp.*", FutureWarning),
)
# Loggers that say the same through `logging` (MONAI: "nvImageCodec is not available; skipping pydicom
# decoder plugin registration.", once per image loader built): only their errors are shown.
KNOWN_HARMLESS_LOGGERS = ("monai.data.nvimgcodec_pydicom_plugin",)


def quiet_known_warnings() -> None:
    """Silences the known-harmless library warnings (run by `run_main`, before any loader is built)."""
    for message, category in KNOWN_HARMLESS:
        warnings.filterwarnings("ignore", message=message, category=category)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    for name in KNOWN_HARMLESS_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)


def fail(message: str, code: int = 1) -> NoReturn:
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(code)


INTERRUPTED = 130  # the shell's code for a command stopped by SIGINT (128 + 2)


def run_main(main: Callable[[], None]) -> None:
    """Runs a command (`main()` parses `sys.argv`); a `TransMedError` prints one clear line and exits with its code.
    Ctrl-C prints the `KeyboardInterrupt`'s message (a command may put a hint there; "" prints nothing) or
    "interrupted", never a traceback."""
    quiet_known_warnings()
    try:
        main()
    except TransMedError as err:
        fail(f"{'config: ' if isinstance(err, ConfigError) else ''}{err}", code=err.exit_code)
    except KeyboardInterrupt as err:
        message = str(err) if err.args else "interrupted"
        if message:
            print(message, file=sys.stderr)
        raise SystemExit(INTERRUPTED) from None


def parser_for(doc: Optional[str], prog: Optional[str]) -> argparse.ArgumentParser:
    """A parser whose description is the command module's docstring."""
    return argparse.ArgumentParser(prog=prog, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)


def add_overrides(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="dotted config overrides, e.g. train.epochs=3")


def add_config(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="YAML config file (a bare name such as knee.yaml is looked up in configs/)")
    add_overrides(parser)


def add_bootstrap(parser: argparse.ArgumentParser, what: str = "the 95%% intervals") -> None:
    parser.add_argument("--bootstrap", type=int, default=1000, help=f"bootstrap resamples for {what}")


def bootstrap_count(n: int) -> int:
    """`--bootstrap` checked before any work (a study or ablation would otherwise train every run first)."""
    if n < 1:
        raise UsageError(f"--bootstrap {n}: the 95% intervals need at least 1 resample (default 1000)")
    return n
