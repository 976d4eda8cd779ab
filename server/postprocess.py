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


def log_odds(outputs: np.ndarray, kind: OutputKind, index: int) -> np.ndarray:
    """Per row, the log-odds of label `index` from the model's raw output: log P(label) - log P(any other).

    Computed from the logits or log-probabilities where the network ends in them, so it still tells confident
    answers apart after their float32 probabilities have rounded to 1 (at odds of about e^17).
    """
    values = np.asarray(outputs, dtype=np.float64)
    if kind is OutputKind.SIGMOID:
        positive = np.clip(values.reshape(len(values)), _TINY, 1.0 - _EPSILON)
        odds = np.log(positive) - np.log1p(-positive)
        return odds if index == 1 else -odds
    if kind is OutputKind.PROBABILITIES:
        values = np.log(np.clip(values, _TINY, None))
    others = np.delete(values, index, axis=1)
    peak = others.max(axis=1)
    return values[:, index] - (peak + np.log(np.exp(others - peak[:, np.newaxis]).sum(axis=1)))


_TINY = 1e-300
_EPSILON = 1e-16
