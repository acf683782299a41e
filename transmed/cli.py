"""Shared command-line plumbing: config arguments and readable failures instead of tracebacks."""

from __future__ import annotations

import argparse
import sys
from typing import Callable, NoReturn

from .config import ConfigError
from .data.errors import DataError
from .engine.checkpoint import UnsafeCheckpointError
from .engine.trainer import NonFiniteLossError, RunDirError, RunExistsError
from .evaluation.evaluate import ResultExistsError
from .models.stem import PretrainedWeightsUnavailable

EXPECTED = (
    DataError,
    PretrainedWeightsUnavailable,
    UnsafeCheckpointError,
    RunExistsError,
    RunDirError,
    ResultExistsError,
    NonFiniteLossError,
    FileNotFoundError,
)


def fail(message: str, code: int = 1) -> NoReturn:
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(code)


def run_main(main: Callable[[], None]) -> None:
    """Runs an entry point; expected failures print one clear line (config errors exit 2)."""
    try:
        main()
    except ConfigError as err:
        fail(f"config: {err}", code=2)
    except EXPECTED as err:
        fail(str(err))


def add_overrides(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="dotted config overrides, e.g. train.epochs=3")
