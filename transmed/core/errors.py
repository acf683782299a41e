"""Every error a user's input can cause derives from `TransMedError`.

Commands catch `TransMedError` and print its message as one line (config errors exit with 2,
the others with 1), so a message must name the file, study or key at fault and say what to do.
Anything else that escapes is a bug in TransMed, and keeps its traceback.
"""

from __future__ import annotations

from typing import Optional


class TransMedError(Exception):
    """Base class of user-facing errors: bad config, data, checkpoint, run folder or weights."""

    exit_code = 1


class ConfigError(TransMedError, ValueError):
    """A config file or override that does not fit the schema; the message names the key."""

    exit_code = 2


class UsageError(TransMedError, ValueError):
    """A command-line request that does not fit (an unknown task, a model without attention)."""

    exit_code = 2


class DataError(TransMedError, ValueError):
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


class CheckpointError(TransMedError, RuntimeError):
    """A checkpoint that is missing, unreadable, or not a TransMed checkpoint."""


class UnsafeCheckpointError(CheckpointError):
    """The file would need arbitrary code to unpickle; it was not loaded."""


class WeightsError(TransMedError, RuntimeError):
    """Pretrained weights that cannot be found, read or mapped onto a backbone."""


class RunError(TransMedError, RuntimeError):
    """A run or result folder that cannot be used as asked."""


class RunExistsError(RunError):
    """The run directory already holds a run and neither resume nor overwrite was asked for."""


class RunDirError(RunError):
    """The run directory cannot be written, or its disk is nearly full."""


class ResultExistsError(RunError):
    """An output folder already holds results; they are never overwritten."""


class NonFiniteLossError(TransMedError, RuntimeError):
    """The loss became NaN or Inf; the message names epoch, step and the studies of the batch."""
