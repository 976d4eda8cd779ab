"""The model metadata contract between export and server."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from cnnserve.metadata import METADATA_KEY, ActivationOutput, ColorMode, ModelMetadata, OutputKind, Preprocessing


def catsdogs_metadata() -> ModelMetadata:
    return ModelMetadata(
        name="catsdogs",
        labels=("cats", "dogs"),
        preprocessing=Preprocessing(color=ColorMode.RGB, height=150, width=150, mean=(0.0,), std=(1.0,)),
        output_kind=OutputKind.SIGMOID,
        extra={"test_accuracy": "0.8"},
    )


def test_metadata_survives_a_round_trip_through_metadata_props() -> None:
    original = catsdogs_metadata()
    restored = ModelMetadata.from_metadata_props({METADATA_KEY: original.to_json()})
    assert restored == original
    assert restored.preprocessing.channels == 3


def test_a_model_without_metadata_is_refused_with_a_hint() -> None:
    with pytest.raises(ValueError, match="cnnserve train"):
        ModelMetadata.from_metadata_props({})


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"labels": ()}, "at least one label"),
        ({"labels": ("a", "b", "c")}, "exactly two labels"),
    ],
)
def test_inconsistent_metadata_is_refused(change: dict, message: str) -> None:
    fields = {**catsdogs_metadata().__dict__, **change}
    with pytest.raises(ValueError, match=message):
        ModelMetadata(**fields)


def test_preprocessing_refuses_a_zero_std() -> None:
    with pytest.raises(ValueError, match="std"):
        Preprocessing(color=ColorMode.GRAYSCALE, height=28, width=28, std=(0.0,))


def test_activation_outputs_survive_a_round_trip_and_are_absent_from_json_when_empty() -> None:
    plain = catsdogs_metadata()
    tapped = replace(plain, activations=(ActivationOutput("conv1", "activation_conv1", (32, 148, 148)),))
    assert ModelMetadata.from_json(tapped.to_json()) == tapped
    assert json.loads(tapped.to_json())["activations"] == [
        {"layer": "conv1", "output": "activation_conv1", "shape": [32, 148, 148]}
    ]
    assert "activations" not in json.loads(plain.to_json())
    assert ModelMetadata.from_json(plain.to_json()).activations == ()


@pytest.mark.parametrize(
    "entries",
    [
        None,
        "conv1",
        [{"layer": "conv1", "output": "activation_conv1"}],
        [{"layer": "conv1", "output": "activation_conv1", "shape": [32, 148]}],
        [{"layer": "conv1", "output": "activation_conv1", "shape": [32, 0, 148]}],
        [{"layer": "conv1", "output": "", "shape": [32, 148, 148]}],
        [{"layer": "conv1", "output": "a", "shape": [1, 1, 1]}, {"layer": "conv1", "output": "b", "shape": [1, 1, 1]}],
    ],
)
def test_malformed_activation_entries_are_refused(entries: object) -> None:
    document = json.loads(catsdogs_metadata().to_json())
    document["activations"] = entries
    with pytest.raises(ValueError):
        ModelMetadata.from_json(json.dumps(document))
