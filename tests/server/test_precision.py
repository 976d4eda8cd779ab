"""fp16: the conversion keeps callers' float32, and the top-1 check refuses a model that fp16 changes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from cnnserve.metadata import ColorMode, OutputKind, Preprocessing
from cnnserve.server.errors import ModelLoadError
from cnnserve.server.precision import Fp16Agreement, check_images, compare_top1, fp16_model, refuse_if_disagreeing
from tests.plain_models import export_torch_classifier, near_tie_graph, save


def session_of(model: bytes) -> ort.InferenceSession:
    return ort.InferenceSession(model, providers=["CPUExecutionProvider"])


def test_the_fp16_graph_computes_in_fp16_but_takes_and_gives_float32(model_repository: Path) -> None:
    model_file = model_repository / "mnist_net" / "1" / "model.onnx"
    original = model_file.read_bytes()
    converted = onnx.load_model_from_string(fp16_model(model_file))
    float32 = onnx.TensorProto.FLOAT
    assert [i.type.tensor_type.elem_type for i in converted.graph.input] == [float32]
    assert [o.type.tensor_type.elem_type for o in converted.graph.output] == [float32]
    weights = [t for t in converted.graph.initializer if len(t.dims) > 1]
    assert weights and all(t.data_type == onnx.TensorProto.FLOAT16 for t in weights)
    images = np.random.default_rng(0).standard_normal((16, 1, 28, 28)).astype(np.float32)
    expected = session_of(original).run(None, {"input": images})[0]
    found = session_of(converted.SerializeToString()).run(None, {"input": images})[0]
    assert found.dtype == np.float32
    np.testing.assert_allclose(found, expected, atol=0.05)


def test_a_model_fp16_cannot_tell_apart_disagrees_on_every_image(tmp_path: Path) -> None:
    model_file = save(near_tie_graph(), tmp_path / "near_tie.onnx")
    original = model_file.read_bytes()
    preprocessing = Preprocessing(ColorMode.GRAYSCALE, 8, 8)
    images = check_images(preprocessing, count=16)
    expected = session_of(original).run(None, {"pixels": images})[0]
    found = session_of(fp16_model(model_file)).run(None, {"pixels": images})[0]
    agreement = compare_top1(expected, found, OutputKind.LOGITS)
    assert (agreement.images, agreement.differing) == (16, 16)
    with pytest.raises(ModelLoadError, match=r"differs from float32's on 16 of 16 generated images"):
        refuse_if_disagreeing(agreement, max_share=0.5)
    refuse_if_disagreeing(agreement, max_share=1.0)


def test_the_check_images_are_varied_model_input_of_the_models_shape() -> None:
    grey = check_images(Preprocessing(ColorMode.GRAYSCALE, 28, 28, scale=1 / 255), count=8)
    colour = check_images(Preprocessing(ColorMode.RGB, 20, 30, scale=1 / 255), count=8)
    assert grey.shape == (8, 1, 28, 28) and colour.shape == (8, 3, 20, 30)
    assert grey.dtype == colour.dtype == np.float32
    assert colour.min() >= 0.0 and colour.max() <= 1.0
    means = colour.mean(axis=(1, 2, 3))
    assert np.unique(np.round(means, 3)).size == 8, "every image differs"


def test_a_sigmoid_output_compares_on_which_side_of_one_half_each_lands() -> None:
    reference = np.array([[0.2], [0.7], [0.51]], np.float32)
    candidate = np.array([[0.3], [0.6], [0.49]], np.float32)
    assert compare_top1(reference, candidate, OutputKind.SIGMOID) == Fp16Agreement(images=3, differing=1)
    with pytest.raises(ModelLoadError, match="output has shape"):
        compare_top1(reference, np.zeros((3, 2), np.float32), OutputKind.SIGMOID)


def test_weights_kept_beside_the_graph_are_converted_and_embedded(tmp_path: Path) -> None:
    """`torch.onnx.export` writes the weights to a file beside the graph by default."""
    model_file = export_torch_classifier(tmp_path / "torch.onnx", classes=5, size=32)
    assert [p.name for p in tmp_path.iterdir() if p != model_file], "the export kept its weights beside the graph"
    converted = fp16_model(model_file)
    images = np.random.default_rng(1).standard_normal((4, 3, 32, 32)).astype(np.float32)
    expected = ort.InferenceSession(str(model_file), providers=["CPUExecutionProvider"]).run(None, {"images": images})
    found = session_of(converted).run(None, {"images": images})
    np.testing.assert_allclose(found[0], expected[0], atol=0.02)
