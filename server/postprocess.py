"""From a model's raw output to probabilities and top-k labels, whatever the network ends in."""

from __future__ import annotations

import numpy as np

from cnnserve.metadata import OutputKind


def to_probabilities(outputs: np.ndarray, kind: OutputKind) -> np.ndarray:
    """Probabilities of shape (N, labels) from a model output of shape (N, K), row by row.

    A sigmoid output (N, 1) holds P(second label), so it becomes the two columns [1 - p, p].
    """
    outputs = np.asarray(outputs, dtype=np.float32)
    if kind is OutputKind.LOGITS:
        shifted = np.exp(outputs - outputs.max(axis=1, keepdims=True))
        return shifted / shifted.sum(axis=1, keepdims=True)
    if kind is OutputKind.LOG_PROBABILITIES:
        return np.exp(outputs)
    if kind is OutputKind.SIGMOID:
        positive = outputs.reshape(len(outputs), 1)
        return np.concatenate([1.0 - positive, positive], axis=1)
    return outputs


def top_k(probabilities: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k most probable labels per row, most probable first (ties keep label order)."""
    return np.argsort(-probabilities, axis=1, kind="stable")[:, :k]
