"""Progress bars for long steps that stay out of logs: one summary line per step off a terminal, none on other ranks.

`progress(...)` is a `tqdm`:
- on a terminal (stderr is a TTY) and on rank 0 (or outside torchrun): the usual bar;
- off a terminal (a log file, a pipe, CI): no bar; when the step is done (the iteration ends or the
  bar is closed) one line on stderr, e.g. `build train dataset: 120 studies in 12.3 s`, with the
  last `set_postfix` values (`epoch 3/20: 283 batches in 95.1 s (loss=0.4123)`); a step that
  stops early (an exception, a `break`) prints none;
- on a torchrun rank other than 0 (`RANK` set and not "0"): nothing at all.

Use it as an iterable (`for batch in progress(loader, desc="predict", unit="batch")`) or by hand
(`with progress(total=n, desc=..., unit="studies") as bar: ... bar.update()`); the same calls work
in all three cases.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Iterable, Optional

from tqdm import tqdm  # the plain one: off a terminal (a notebook too) the summary line stands in for it


def is_main_rank() -> bool:
    """False on a torchrun rank other than 0 (the `RANK` environment variable)."""
    return os.environ.get("RANK", "0") in ("", "0")


def on_terminal() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):  # a replaced or closed stderr
        return False


class Progress(tqdm):
    """tqdm that, when disabled, still counts and prints one summary line on close (see the module docstring)."""

    def __init__(self, iterable: Optional[Iterable] = None, *, summary: bool, **kwargs) -> None:
        self._summary, self._summarised = summary, False
        self._count, self._start, self._postfix_text = 0, time.perf_counter(), ""
        super().__init__(iterable, **kwargs)
        if self.disable:  # tqdm keeps the total (from len(iterable) too) but not these when disabled
            self.desc, self.unit = kwargs.get("desc") or "", kwargs.get("unit", "it")

    def __iter__(self):
        if not self.disable:
            yield from super().__iter__()
            return
        try:
            for obj in self.iterable:
                yield obj
                self._count += 1
        except GeneratorExit:  # the loop stopped early (a break, an error): no summary of a step not done
            self._summarised = True
            raise
        self.close()

    def __exit__(self, exc_type, exc_value, traceback):
        if exc_type is not None:  # the step failed: its error speaks, not a summary
            self._summarised = True
        return super().__exit__(exc_type, exc_value, traceback)

    def __del__(self):
        self._summarised = True  # never closed: not a finished step
        super().__del__()

    def update(self, n: float = 1) -> Optional[bool]:
        if self.disable:
            self._count += n
            return None
        return super().update(n)

    def set_postfix(self, ordered_dict=None, refresh: bool = True, **kwargs) -> None:
        if self.disable:
            items = {**(ordered_dict or {}), **kwargs}
            self._postfix_text = ", ".join(f"{key}={value}" for key, value in items.items())
            return
        super().set_postfix(ordered_dict, refresh, **kwargs)

    def summary_line(self) -> str:
        count = int(self._count) if float(self._count).is_integer() else self._count
        done = f"{count}/{self.total}" if self.total is not None and count != self.total else f"{count}"
        line = f"{self.desc}: {done} {self.unit} in {time.perf_counter() - self._start:.1f} s"
        return f"{line} ({self._postfix_text})" if self._postfix_text else line

    def close(self) -> None:
        if self.disable and self._summary and not self._summarised:
            self._summarised = True
            try:
                print(self.summary_line(), file=sys.stderr, flush=True)
            except (AttributeError, ValueError, OSError):  # stderr gone (interpreter shutdown, a closed pipe)
                pass
        super().close()


def progress(iterable: Optional[Iterable] = None, *, desc: str, total: Optional[int] = None, unit: str = "it", leave: bool = False) -> tqdm:
    """A progress bar for one long step: a bar on a terminal, one summary line otherwise, nothing on ranks other than 0."""
    main = is_main_rank()
    return Progress(
        iterable,
        summary=main,
        desc=desc,
        total=total,
        unit=unit,
        leave=leave,
        dynamic_ncols=True,
        disable=not (main and on_terminal()),
    )
