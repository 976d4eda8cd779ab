"""`--activations`: the exported graph also outputs each convolution's feature maps, for the server to draw."""

import json

import numpy as np
import onnxruntime
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cnnserve.export import build_model, generate_xo, get_spec
from cnnserve.export.onnx_export import _check_signature, check_parity, embedded_metadata, export_to_onnx
from cnnserve.export.pipeline import model_metadata, read_metadata
from cnnserve.metadata import METADATA_KEY, ActivationOutput, ModelMetadata
from cnnserve.preprocessing import to_model_input


def _session(model):
    source = model.SerializeToString() if hasattr(model, "SerializeToString") else str(model)
    return onnxruntime.InferenceSession(source, providers=["CPUExecutionProvider"])


def _outputs(session):
    return [(output.name, output.shape) for output in session.get_outputs()]


def _export(name: str, *, activations: bool = True):
    """An untrained network of the catalog, exported; returns the module and the ONNX model."""
    spec = get_spec(name)
    torch.manual_seed(0)
    model = spec.create().eval()
    return model, export_to_onnx(model, model_metadata(spec, spec.labels, {}), activations=activations)


@pytest.fixture(scope="module")
def xo_models(tmp_path_factory):
    """xo trained for one epoch with the same seed twice, exported without and with activation outputs."""
    root = tmp_path_factory.mktemp("activations")
    return build_model("xo", root / "plain", epochs=1), build_model("xo", root / "tapped", epochs=1, activations=True)


def test_the_classifier_output_stays_first_and_unchanged(xo_models):
    plain, tapped = xo_models
    metadata = read_metadata(tapped)
    images, _ = generate_xo(32, seed=5)
    inputs = {"input": to_model_input(images, metadata.preprocessing)}
    (expected,) = _session(plain).run(["output"], inputs)
    actual = _session(tapped).run(None, inputs)[0]
    np.testing.assert_allclose(actual, expected, atol=1e-6)
    assert np.array_equal(actual.argmax(axis=1), expected.argmax(axis=1))


def test_xo_outputs_its_one_convolution_as_activation_conv1(xo_models):
    _, tapped = xo_models
    assert _outputs(_session(tapped)) == [("output", ["batch", 2]), ("activation_conv1", ["batch", 3, 7, 7])]
    assert read_metadata(tapped).activations == (ActivationOutput("conv1", "activation_conv1", (3, 7, 7)),)


def test_the_listed_shapes_are_what_onnx_runtime_returns(xo_models):
    _, tapped = xo_models
    metadata = read_metadata(tapped)
    outputs = _session(tapped).run(None, {"input": np.zeros((5, 1, 9, 9), np.float32)})
    assert [a.shape for a in outputs[1:]] == [(5, *activation.shape) for activation in metadata.activations]


def test_without_the_flag_there_are_no_extra_outputs_and_no_activations_key(xo_models):
    plain, _ = xo_models
    session = _session(plain)
    assert [name for name, _ in _outputs(session)] == ["output"]
    assert "activations" not in json.loads(session.get_modelmeta().custom_metadata_map[METADATA_KEY])
    assert read_metadata(plain).activations == ()


def test_the_exported_metadata_round_trips_through_json(xo_models):
    _, tapped = xo_models
    metadata = read_metadata(tapped)
    assert ModelMetadata.from_json(metadata.to_json()) == metadata


def test_a_feature_map_is_taken_after_the_relu_that_follows_its_convolution():
    model, proto = _export("xo")
    inputs = torch.randn(4, 1, 9, 9)
    (feature_maps,) = _session(proto).run(["activation_conv1"], {"input": inputs.numpy()})
    with torch.no_grad():
        np.testing.assert_allclose(feature_maps, F.relu(model.conv(inputs)).numpy(), atol=1e-5)


def test_mnist_net_outputs_its_two_convolutions_before_pooling_and_relu():
    """mnist_net pools before its ReLU, so its feature maps are the convolutions' own outputs."""
    model, proto = _export("mnist_net")
    assert embedded_metadata(proto).activations == (
        ActivationOutput("conv1", "activation_conv1", (10, 24, 24)),
        ActivationOutput("conv2", "activation_conv2", (20, 8, 8)),
    )
    inputs = torch.randn(3, 1, 28, 28)
    _, conv1, conv2 = _session(proto).run(None, {"input": inputs.numpy()})
    with torch.no_grad():
        expected_conv1 = model.conv1(inputs)
        expected_conv2 = model.conv2(F.relu(F.max_pool2d(expected_conv1, 2)))
    np.testing.assert_allclose(conv1, expected_conv1.numpy(), atol=1e-4)
    np.testing.assert_allclose(conv2, expected_conv2.numpy(), atol=1e-4)
    assert conv1.min() < 0


@pytest.mark.parametrize("name", ["mnist_convnet", "mnist_cnn32", "mnist_wide", "catsdogs"])
def test_every_convolution_gets_an_output_and_parity_still_holds(name):
    model, proto = _export(name)
    convolutions = sum(isinstance(module, nn.Conv2d) for module in model.modules())
    activations = embedded_metadata(proto).activations
    assert [a.output for a in activations] == [f"activation_conv{i}" for i in range(1, convolutions + 1)]
    assert [name for name, _ in _outputs(_session(proto))] == ["output", *(a.output for a in activations)]
    pre = get_spec(name).preprocessing
    check_parity(model, proto.SerializeToString(), torch.randn(8, pre.channels, pre.height, pre.width))


def test_the_signature_check_accepts_extra_outputs_only_when_they_were_asked_for():
    _, proto = _export("xo")
    _check_signature(proto, 1, 9, 9, embedded_metadata(proto).activations)
    with pytest.raises(ValueError, match="outputs"):
        _check_signature(proto, 1, 9, 9)


def test_train_and_export_commands_take_the_flag(tmp_path, cnnserve):
    models, run = tmp_path / "models", tmp_path / "run"
    assert cnnserve(["train", "xo", "--epochs", "1", "--activations", "--out", str(models), "--run-dir", str(run)]) == 0
    assert [a.layer for a in read_metadata(models / "xo" / "1" / "model.onnx").activations] == ["conv1"]

    export = ["export", "xo", "--checkpoint", str(run / "best.pt"), "--out", str(models)]
    assert cnnserve([*export, "--activations", "--int8"]) == 0
    assert cnnserve(export) == 0
    assert [a.layer for a in read_metadata(models / "xo" / "2" / "model.onnx").activations] == ["conv1"]
    assert read_metadata(models / "xo" / "3" / "model.onnx").activations == ()
    int8 = models / "xo_int8" / "1" / "model.onnx"
    assert [name for name, _ in _outputs(_session(int8))] == ["output", "activation_conv1"]
    assert read_metadata(int8).activations == read_metadata(models / "xo" / "2" / "model.onnx").activations
