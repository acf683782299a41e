"""What a model predicts (`LabelSpec`) and what a pass over a split returns (`Predictions`).

Shared by data (the manifests carry labels), engine (losses, training) and evaluation.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import torch

from .errors import CheckpointError


@dataclass(frozen=True)
class LabelSpec:
    """What the model predicts: independent binary tasks (multilabel) or one of several classes, and how
    its logits become probabilities.

    `temperature` (temperature scaling, Guo et al. 2017, fitted on the validation split at the end of
    training): one per task (multilabel) or one for all classes (multiclass); None: uncalibrated
    (T = 1). It travels with the spec, so a model rebuilt from a checkpoint or an export gives
    calibrated probabilities wherever `probabilities` is called.
    """

    kind: str  # multilabel | multiclass
    names: tuple[str, ...]
    temperature: Optional[tuple[float, ...]] = None

    def __post_init__(self) -> None:
        if self.temperature is not None:
            expected = self.num_outputs if self.kind == "multilabel" else 1
            values = tuple(float(t) for t in self.temperature)
            if len(values) != expected or not all(np.isfinite(t) and t > 0 for t in values):
                raise CheckpointError(
                    f"label spec temperature {list(self.temperature)}: expected {expected} positive finite "
                    f"value{'s' if expected > 1 else ''} ({'one per task' if self.kind == 'multilabel' else 'one for all classes'})"
                )
            object.__setattr__(self, "temperature", values)

    @property
    def num_outputs(self) -> int:
        return len(self.names)

    def probabilities(self, logits: torch.Tensor, calibrated: bool = True) -> torch.Tensor:
        """The model returns logits; sigmoid per task or softmax over classes of logits / temperature
        gives probabilities (`calibrated=False`: of the logits themselves, the model's raw scores)."""
        if calibrated and self.temperature is not None:
            logits = logits / torch.tensor(self.temperature, dtype=logits.dtype, device=logits.device)
        return torch.sigmoid(logits) if self.kind == "multilabel" else torch.softmax(logits, dim=-1)

    def to_dict(self) -> dict:
        data = {"kind": self.kind, "names": list(self.names)}
        return data if self.temperature is None else {**data, "temperature": list(self.temperature)}

    @classmethod
    def from_dict(cls, data: dict) -> "LabelSpec":
        temperature = data.get("temperature")
        return cls(data["kind"], tuple(data["names"]), None if temperature is None else tuple(temperature))


@dataclass
class Predictions:
    """One split's model outputs, study by study."""

    ids: list[str]
    logits: np.ndarray  # (N, K)
    probs: np.ndarray  # (N, K)
    labels: Optional[np.ndarray]  # (N, K) multilabel or (N,) multiclass
    skipped: list[dict] = field(default_factory=list)  # studies data.on_error=skip left out: {id, file, reason}
