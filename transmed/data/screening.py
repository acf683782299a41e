"""Finding the `StudyError` behind a failure, and `OnError`, which applies `data.on_error`."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Optional

from ..core.errors import DataError, StudyError


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


def unlabelled_folder(root: str | Path, layout: str) -> Path:
    """`data.unlabelled_root` as a folder, or one line saying it is missing and the layout it should have."""
    root = Path(root)
    if not root.is_dir():
        where = "" if root.is_absolute() else f" (that is {root.absolute()})"
        raise DataError(
            f"data.unlabelled_root not found: {root}{where}; set it to a folder of studies without labels, laid out as {layout}"
        )
    return root
