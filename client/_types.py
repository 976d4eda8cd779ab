"""Typed results returned by the client."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Prediction:
    label: str
    index: int
    probability: float


@dataclass(frozen=True)
class ClassificationResult:
    """The answer for one image: its top labels, most probable first."""

    predictions: tuple[Prediction, ...]
    probabilities: tuple[float, ...] = field(default=())
    """Every label's probability in label order, when asked for."""

    @property
    def label(self) -> str:
        return self.predictions[0].label

    @property
    def probability(self) -> float:
        return self.predictions[0].probability
