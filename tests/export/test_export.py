"""The exported file is what the server expects: one input, one output, dynamic batch, metadata, parity."""

import numpy as np
import onnx
import onnxruntime
import pytest
import torch

from cnnserve.export import get_spec
from cnnserve.export.onnx_export import PARITY_ATOL, ParityError, check_parity, export_to_onnx
from cnnserve.export.pipeline import model_metadata
from cnnserve.metadata import METADATA_KEY, ModelMetadata, OutputKind


def _session(path):
    return onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def test_the_model_lands_in_version_1_of_the_repository(xo_run, workspace):
    assert xo_run.model_path == workspace / "models" / "xo" / "1" / "model.onnx"
    assert sorted(p.name for p in xo_run.version_dir.iterdir()) == ["model.onnx"]


def test_metadata_round_trips_through_onnx_runtime(xo_run):
    props = _session(xo_run.model_path).get_modelmeta().custom_metadata_map
    metadata = ModelMetadata.from_metadata_props(props)
    spec = get_spec("xo")
    assert metadata.name == "xo"
    assert metadata.labels == ("O", "X")
    assert metadata.output_kind is OutputKind.LOGITS
    assert metadata.preprocessing == spec.preprocessing
    assert float(metadata.extra["test_accuracy"]) == pytest.approx(xo_run.report.pytorch_accuracy, abs=1e-4)
    assert METADATA_KEY in props


def test_one_float_input_with_a_dynamic_batch_axis_and_one_output(xo_run):
    session = _session(xo_run.model_path)
    (graph_input,), (graph_output,) = session.get_inputs(), session.get_outputs()
    assert (graph_input.name, graph_input.shape, graph_input.type) == ("input", ["batch", 1, 9, 9], "tensor(float)")
    assert (graph_output.name, graph_output.shape) == ("output", ["batch", 2])
    for batch in (1, 7, 64):
        (out,) = session.run(None, {"input": np.zeros((batch, 1, 9, 9), np.float32)})
        assert out.shape == (batch, 2)


def test_the_file_is_self_contained_and_passes_the_checker(xo_run):
    model = onnx.load(str(xo_run.model_path))
    onnx.checker.check_model(model, full_check=True)
    assert not any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer)


def test_onnx_and_pytorch_agree_on_every_test_image(xo_run):
    assert xo_run.report.onnx_agrees_with_pytorch
    assert xo_run.report.onnx_accuracy == xo_run.report.pytorch_accuracy
    assert xo_run.report.parity_max_abs_difference <= PARITY_ATOL


@pytest.mark.parametrize("name", ["xo", "mnist_net", "mnist_convnet", "mnist_cnn32", "mnist_wide", "catsdogs"])
def test_every_architecture_exports_with_parity_at_batch_1_7_and_64(name):
    spec = get_spec(name)
    torch.manual_seed(0)
    model = spec.create().eval()
    proto = export_to_onnx(model, model_metadata(spec, spec.labels, {}))
    pre = spec.preprocessing
    inputs = torch.randn(64, pre.channels, pre.height, pre.width)
    report = check_parity(model, proto.SerializeToString(), inputs)
    assert report.batch_sizes == (1, 7, 64)


def test_a_wrong_graph_fails_the_parity_check():
    spec = get_spec("xo")
    model = spec.create().eval()
    proto = export_to_onnx(model, model_metadata(spec, spec.labels, {}))
    with torch.no_grad():
        model.fc.bias += 1.0
    with pytest.raises(ParityError):
        check_parity(model, proto.SerializeToString(), torch.randn(8, 1, 9, 9))
