"""Training, inference, checkpoints and run logging."""

from .checkpoint import UnsafeCheckpointError, load_checkpoint, save_checkpoint
from .inference import Predictions, predict
from .trainer import NonFiniteLossError, RunExistsError, train

__all__ = [
    "NonFiniteLossError",
    "Predictions",
    "RunExistsError",
    "UnsafeCheckpointError",
    "load_checkpoint",
    "predict",
    "save_checkpoint",
    "train",
]
