"""Training, inference and run logging."""

from .inference import predict
from .trainer import train

__all__ = ["predict", "train"]
