"""TransMed: multi-modal MRI classification with a CNN stem and transformer fusion.

The public API; see docs/architecture.md for the layers behind it.
"""

from .core import __version__
from .models import TransMed, create_model, list_models
from .models.loading import load_model

__all__ = ["TransMed", "__version__", "create_model", "list_models", "load_model"]
