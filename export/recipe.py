"""How a model is trained: the typed recipe the seed notes give each network, overridable per run."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class OptimizerName(StrEnum):
    SGD = "sgd"
    ADAM = "adam"
    RMSPROP = "rmsprop"


class LossName(StrEnum):
    NLL = "nll"
    """The model already ends in log_softmax."""
    CROSS_ENTROPY = "cross_entropy"
    """The model returns logits; same as Keras' categorical cross-entropy after a softmax."""
    BINARY_CROSS_ENTROPY = "bce"
    """The model returns one sigmoid probability per image."""


@dataclass(frozen=True)
class TrainingRecipe:
    """Optimiser, loss, batch size and schedule. Defaults are the notes' choices where the notes give one."""

    optimizer: OptimizerName
    learning_rate: float
    loss: LossName
    batch_size: int
    epochs: int
    momentum: float = 0.0
    weight_decay: float = 0.0
    """L2 penalty on the weights."""
    lr_decay_factor: float = 0.5
    """Multiply the learning rate by this when validation loss stops improving (1.0 turns decay off)."""
    lr_decay_patience: int = 3
    """Epochs without a better validation loss before the learning rate decays."""
    early_stopping_patience: int = 8
    """Epochs without a better validation loss before training stops (0 turns early stopping off)."""
    early_stopping_min_delta: float = 1e-4
    """A validation loss must beat the best by this much to reset early stopping's patience."""
    augment: bool = False
    """Random rotation, shift, shear, zoom and horizontal flip of training images (image folders)."""

    def __str__(self) -> str:
        patience = self.early_stopping_patience
        stopping = f"early stop after {patience} stale epochs" if patience else "no early stop"
        return (
            f"{self.optimizer} lr {self.learning_rate:g}, {self.loss} loss, batch {self.batch_size}, "
            f"up to {self.epochs} epochs ({stopping}){', augmented' if self.augment else ''}"
        )

    def __post_init__(self) -> None:
        if self.learning_rate <= 0 or self.batch_size <= 0 or self.epochs <= 0:
            raise ValueError("learning rate, batch size and epochs must be positive")
        if not 0 < self.lr_decay_factor <= 1:
            raise ValueError("lr_decay_factor must lie in (0, 1]")
