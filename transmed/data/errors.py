"""Errors for bad study data; each names the study and the file. `OnError` applies `data.on_error`."""

from __future__ import annotations

from typing import Any, Callable, Optional


class DataError(ValueError):
    """A dataset-level problem (layout, label files, splits)."""


class StudyError(DataError):
    """One study cannot be used; carries its id, the offending file and the reason."""

    def __init__(self, study_id: str, reason: str, file: Optional[str] = None) -> None:
        self.study_id, self.reason, self.file = study_id, reason, file
        where = f" (file {file})" if file else ""
        super().__init__(f"study {study_id}{where}: {reason}")

    def record(self) -> dict:
        """The `skipped.json` entry for this study."""
        return {"id": self.study_id, "file": self.file, "reason": self.reason}


def study_error_in(err: Optional[BaseException]) -> Optional[StudyError]:
    """The `StudyError` behind `err`, if any (MONAI wraps transform errors in RuntimeErrors)."""
    while err is not None:
        if isinstance(err, StudyError):
            return err
        err = err.__cause__ or err.__context__
    return None


def catch_study_error(fn: Callable[..., Any], *args: Any) -> tuple[Any, Optional[StudyError]]:
    """`(fn(*args), None)`, or `(None, the StudyError behind the failure)`; other failures propagate."""
    try:
        return fn(*args), None
    except Exception as err:
        failure = study_error_in(err)
        if failure is None:
            raise
        return None, failure


class OnError:
    """`data.on_error`: `raise` raises the first `StudyError`; `skip` records it so the study is left out."""

    def __init__(self, mode: str = "raise") -> None:
        if mode not in ("raise", "skip"):
            raise DataError(f"data.on_error must be 'raise' or 'skip', not {mode!r}")
        self.mode = mode
        self.skipped: list[dict] = []

    def __call__(self, err: StudyError) -> None:
        if self.mode == "raise":
            raise err
        self.skipped.append(err.record())
