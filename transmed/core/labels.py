"""What a model predicts (`LabelSpec`) and what a pass over a split returns (`Predictions`).

Shared by data (the manifests carry labels), engine (losses, training) and evaluation.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import torch


@dataclass(frozen=True)
class LabelSpec:
    """What the model predicts: independent binary tasks (multilabel) or one of several classes."""

    kind: str  # multilabel | multiclass
    names: tuple[str, ...]

    @property
    def num_outputs(self) -> int:
        return len(self.names)

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """The model returns logits; sigmoid per task or softmax over classes gives probabilities."""
        return torch.sigmoid(logits) if self.kind == "multilabel" else torch.softmax(logits, dim=-1)

    def to_dict(self) -> dict:
        return {"kind": self.kind, "names": list(self.names)}

    @classmethod
    def from_dict(cls, data: dict) -> "LabelSpec":
        return cls(data["kind"], tuple(data["names"]))


@dataclass
class Predictions:
    """One split's model outputs, study by study."""

    ids: list[str]
    logits: np.ndarray  # (N, K)
    probs: np.ndarray  # (N, K)
    labels: Optional[np.ndarray]  # (N, K) multilabel or (N,) multiclass
    skipped: list[dict] = field(default_factory=list)  # studies data.on_error=skip left out: {id, file, reason}
