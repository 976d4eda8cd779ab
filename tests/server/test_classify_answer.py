"""Classify's answer is serialized without building the message (server/api/classifier.py, `classify_answer`):
parsed, it is exactly the ClassifyResponse a reader expects, the labels in order of probability, for every row
count, top_k, label set and payload length."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from cnnserve.server.api.classifier import classify_answer
from cnnserve.v1 import classifier_pb2 as pb


def model(labels: tuple[str, ...], name: str = "digits", version: int = 1) -> SimpleNamespace:
    return SimpleNamespace(name=name, version=version, metadata=SimpleNamespace(labels=labels))


def expected(
    served: SimpleNamespace, probabilities: np.ndarray, k: int, with_probabilities: bool
) -> pb.ClassifyResponse:
    """The message, built field by field: each row's k most probable labels, the first of equals first, NaN last."""
    response = pb.ClassifyResponse(model=served.name, version=served.version)
    labels = served.metadata.labels
    for row in probabilities:
        order = sorted(range(len(row)), key=lambda i: (np.isnan(row[i]), -row[i] if not np.isnan(row[i]) else 0, i))
        result = response.results.add()
        for index in order[:k]:
            result.top.add(label=labels[index], index=index, probability=float(row[index]))
        if with_probabilities:
            result.probabilities.extend(row.tolist())
    return response


DIGITS = tuple(str(digit) for digit in range(10))


@pytest.mark.parametrize("rows", [1, 3, 64])
@pytest.mark.parametrize("k", [1, 2, 10])
@pytest.mark.parametrize("with_probabilities", [False, True])
def test_the_answer_parses_to_the_expected_message(rows: int, k: int, with_probabilities: bool) -> None:
    probabilities = np.random.default_rng(rows * k).random((rows, 10), dtype=np.float32)
    served = model(DIGITS)
    answer = classify_answer(served, probabilities, k, with_probabilities)
    assert pb.ClassifyResponse.FromString(answer) == expected(served, probabilities, k, with_probabilities)


def test_ties_zeros_and_nan_rank_as_a_sort_would() -> None:
    probabilities = np.array(
        [
            [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0],  # all equal: the first label
            [0.1, 0.4, 0.4, 0.1, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0],  # a tie at the top: the first of the two
            [np.nan, 0.9, 0.1, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0],  # NaN goes last, as the sort puts it
            [np.nan] * 10,
        ],
        dtype=np.float32,
    )
    served = model(DIGITS)
    for k in (1, 3):
        parsed = pb.ClassifyResponse.FromString(classify_answer(served, probabilities, k, False))
        assert [result.top[0].index for result in parsed.results] == [0, 1, 1, 0]
        reference = expected(served, probabilities, k, False)
        assert [[entry.index for entry in result.top] for result in parsed.results] == [
            [entry.index for entry in result.top] for result in reference.results
        ]


def test_long_labels_many_labels_and_large_versions_take_multi_byte_lengths() -> None:
    labels = tuple(f"{'a very long label name ' * 8}{index} é" for index in range(1000))
    probabilities = np.random.default_rng(7).random((5, 1000), dtype=np.float32)
    served = model(labels, name="long-" * 40, version=2**40)
    for k, with_probabilities in ((1, True), (20, False)):
        answer = classify_answer(served, probabilities, k, with_probabilities)
        assert len(answer) > 16384
        assert pb.ClassifyResponse.FromString(answer) == expected(served, probabilities, k, with_probabilities)


def test_a_reloaded_model_with_new_labels_answers_with_them() -> None:
    probabilities = np.array([[0.2, 0.8]], dtype=np.float32)
    before = classify_answer(model(("cat", "dog")), probabilities, 1, False)
    after = classify_answer(model(("chat", "chien")), probabilities, 1, False)
    assert pb.ClassifyResponse.FromString(before).results[0].top[0].label == "dog"
    assert pb.ClassifyResponse.FromString(after).results[0].top[0].label == "chien"
