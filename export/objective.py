"""Loss and predicted class for each kind of model output, so training code never branches on it."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .recipe import LossName


class Objective:
    """Pairs a recipe's loss with how to read a class off the model's output."""

    def __init__(self, loss: LossName) -> None:
        self.loss_name = loss

    def loss(self, outputs: torch.Tensor, labels: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
        if self.loss_name is LossName.NLL:
            return F.nll_loss(outputs, labels, reduction=reduction)
        if self.loss_name is LossName.CROSS_ENTROPY:
            return F.cross_entropy(outputs, labels, reduction=reduction)
        probabilities = outputs.reshape(-1).clamp(1e-7, 1 - 1e-7)
        return F.binary_cross_entropy(probabilities, labels.to(outputs.dtype), reduction=reduction)

    def predict(self, outputs: torch.Tensor) -> torch.Tensor:
        if self.loss_name is LossName.BINARY_CROSS_ENTROPY:
            return (outputs.reshape(-1) > 0.5).long()
        return outputs.argmax(dim=1)
