"""Files that are never left half-written: atomic writes and JSON."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import signal
import tempfile
import threading
from pathlib import Path
from typing import Any, Callable, Iterator

from .errors import RunDirError


@functools.cache
def umask() -> int:
    """The process's umask, read once. Linux shows it in /proc; elsewhere it is read by setting and
    restoring it, which is racy only against threads creating files at that instant (hence once, early)."""
    with contextlib.suppress(OSError, ValueError, StopIteration):
        status = Path("/proc/self/status").read_text()
        return int(next(line for line in status.splitlines() if line.startswith("Umask:")).split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def sigint_deferred() -> Iterator[None]:
    """Ctrl-C inside the block takes effect when it ends: a `KeyboardInterrupt` inside `torch.save` leaves its zip
    writer raising a `RuntimeError` instead, which the commands cannot tell from a bug. Only where Python's own
    SIGINT handler is installed (the main thread; a program with its own handler keeps it)."""
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        yield
        return
    caught: list[int] = []
    signal.signal(signal.SIGINT, lambda signum, frame: caught.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    if caught:
        raise KeyboardInterrupt


def atomic_write(path: str | Path, write: Callable[[Any], None], mode: str = "wb") -> None:
    """Write to a temporary file in the same folder, fsync, then rename over `path`.

    The file gets the mode a plain `open` would give (0666 less the umask: 0644 under umask 022);
    `mkstemp` alone would leave it readable by its owner only. Ctrl-C waits until the file is in place."""
    path = Path(path)
    if path.is_dir():
        raise RunDirError(f"cannot write {path}: it is a folder; give a file path")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as err:
        raise RunDirError(f"cannot write {path}: {err.strerror or err}") from None
    try:
        with sigint_deferred():
            with os.fdopen(fd, mode) as f:
                os.fchmod(f.fileno(), 0o666 & ~umask())
                write(f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_json(path: str | Path, obj: Any) -> None:
    atomic_write(path, lambda f: json.dump(obj, f, indent=2, allow_nan=False), mode="w")
