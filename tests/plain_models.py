"""ONNX classifiers that cnnserve's exporter did not write, as other tools write them, for the import tests.

`classifier_graph` builds one with `onnx.helper`, the way tf2onnx or a model zoo hands one over: any input name,
NCHW or NHWC, float32 or uint8, a fixed or dynamic batch, plain scores or a final Softmax, LogSoftmax or
Sigmoid. Its weights are small and random, and it looks at every pixel (flatten, then one dense layer), so any
difference in preprocessing shows in its answers. `export_torch_classifier` exports a small PyTorch network with
plain `torch.onnx.export`, as a team using PyTorch would.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17


def classifier_graph(
    *,
    size: tuple[int, int] = (12, 10),
    channels: int = 3,
    layout: str = "NCHW",
    dtype: str = "float32",
    classes: int = 4,
    final: str | None = None,
    batch: int | str = "batch",
    input_name: str = "images",
    output_name: str = "scores",
    inputs: int = 1,
    output_shape: list[int | str] | None = None,
    seed: int = 0,
) -> onnx.ModelProto:
    """A classifier graph: input -> (Cast) -> Flatten -> MatMul + Add -> (`final`) -> [batch, classes].

    `inputs` above 1 adds inputs that are summed with the first (a model cnnserve must refuse); `output_shape`
    declares another output shape than [batch, classes] (reshaping the scores to it).
    """
    height, width = size
    shape = [batch, channels, height, width] if layout == "NCHW" else [batch, height, width, channels]
    element = TensorProto.UINT8 if dtype == "uint8" else TensorProto.FLOAT
    rng = np.random.default_rng(seed)
    features = channels * height * width
    scale = 1.0 / (255.0 * np.sqrt(features)) if dtype == "uint8" else 1.0 / np.sqrt(features)
    weights = (rng.standard_normal((features, classes)) * scale).astype(np.float32)
    bias = (rng.standard_normal(classes) * 0.1).astype(np.float32)
    initializers = [numpy_helper.from_array(weights, "weights"), numpy_helper.from_array(bias, "bias")]
    nodes = []
    pixels = input_name
    graph_inputs = [helper.make_tensor_value_info(input_name, element, shape)]
    for extra in range(1, inputs):
        name = f"{input_name}_{extra}"
        graph_inputs.append(helper.make_tensor_value_info(name, element, shape))
        nodes.append(helper.make_node("Add", [pixels, name], [f"summed_{extra}"]))
        pixels = f"summed_{extra}"
    if dtype == "uint8":
        nodes.append(helper.make_node("Cast", [pixels], ["as_float"], to=TensorProto.FLOAT))
        pixels = "as_float"
    nodes += [
        helper.make_node("Flatten", [pixels], ["flat"], axis=1),
        helper.make_node("MatMul", ["flat", "weights"], ["product"]),
        helper.make_node("Add", ["product", "bias"], ["logits"]),
    ]
    scores = "logits"
    if final is not None:
        nodes.append(helper.make_node(final, [scores], ["final"], **({"axis": 1} if "Softmax" in final else {})))
        scores = "final"
    if output_shape is not None:
        target = numpy_helper.from_array(np.array([d if isinstance(d, int) else -1 for d in output_shape]), "shape")
        initializers.append(target)
        nodes.append(helper.make_node("Reshape", [scores, "shape"], [output_name]))
        declared = output_shape
    else:
        nodes.append(helper.make_node("Identity", [scores], [output_name]))
        declared = [batch, classes]
    graph = helper.make_graph(
        nodes,
        "plain_classifier",
        graph_inputs,
        [helper.make_tensor_value_info(output_name, TensorProto.FLOAT, declared)],
        initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="tests")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def save(model: onnx.ModelProto, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def write_labels(path: Path, count: int) -> Path:
    path.write_text("".join(f"class {i}\n" for i in range(count)))
    return path


def export_torch_classifier(path: Path, classes: int = 5, size: int = 32) -> Path:
    """A small convolutional network defined here, exported with plain `torch.onnx.export` (its defaults: the
    dynamo exporter, weights in ``<name>.data`` beside the file), a dynamic batch, logits out."""
    import torch

    class SmallNet(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 6, 3, stride=2)
            self.head = torch.nn.Linear(6 * ((size - 3) // 2 + 1) ** 2, classes)

        def forward(self, images: torch.Tensor) -> torch.Tensor:
            return self.head(torch.relu(self.conv(images)).flatten(1))

    torch.manual_seed(0)
    network = SmallNet().eval()
    example = (torch.zeros(2, 3, size, size),)
    torch.onnx.export(network, example, str(path), dynamic_shapes=({0: torch.export.Dim("batch")},))
    return path


def near_tie_graph(*, gap: float = 1e-3) -> onnx.ModelProto:
    """A 1x8x8 two-class classifier whose second logit is always the first plus `gap`: float32 tells them apart,
    float16 (about 0.004 apart near 4) cannot, so in fp16 every answer flips to the first class."""
    weights = np.full((64, 2), 1.0 / 64, np.float32)
    bias = np.array([4.0, 4.0 + gap], np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("Flatten", ["pixels"], ["flat"], axis=1),
            helper.make_node("MatMul", ["flat", "weights"], ["product"]),
            helper.make_node("Add", ["product", "bias"], ["logits"]),
        ],
        "near_tie",
        [helper.make_tensor_value_info("pixels", TensorProto.FLOAT, ["batch", 1, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 2])],
        [numpy_helper.from_array(weights, "weights"), numpy_helper.from_array(bias, "bias")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="tests")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model
