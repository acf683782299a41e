"""Models: TransMed and the baselines, behind a timm-like registry."""

from . import zoo  # noqa: F401  (registers the models)
from .factory import build_model
from .registry import create_model, list_models, register_model
from .stem import CNNStem, PretrainedWeightsUnavailable
from .transmed import TransMed

__all__ = ["TransMed", "build_model", "CNNStem", "PretrainedWeightsUnavailable", "create_model", "list_models", "register_model"]
