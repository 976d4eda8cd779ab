"""Convolution feature maps as extra graph outputs, so the server can draw them (``--activations``).

After the classifier output, the graph gets one output per Conv node, in graph order, named ``activation_conv1``,
``activation_conv2``, ...: the output of the activation that directly follows the Conv (a node of
`ACTIVATION_OPS` that is the Conv output's only consumer), otherwise the Conv's own output. For ``mnist_net``,
whose convolutions feed a max-pool before their ReLU, that is the convolution's output itself. Each new output is
an Identity of the tensor, so the graph computes what it did before and the names stay the same whatever the
exporter called its tensors.
"""

from __future__ import annotations

from collections import defaultdict

import onnx
from onnx import helper

from cnnserve.metadata import ActivationOutput

ACTIVATION_OPS = frozenset(
    {
        "Celu",
        "Clip",
        "Elu",
        "Gelu",
        "HardSigmoid",
        "HardSwish",
        "LeakyRelu",
        "Mish",
        "PRelu",
        "Relu",
        "Selu",
        "Sigmoid",
        "Softplus",
        "Softsign",
        "Tanh",
        "ThresholdedRelu",
    }
)
"""Elementwise ONNX activations: a Conv's feature maps are taken after one of these when it directly follows."""

OUTPUT_PREFIX = "activation_"
_ONNX_DOMAINS = ("", "ai.onnx")


def add_activation_outputs(proto: onnx.ModelProto, batch_axis: str) -> tuple[ActivationOutput, ...]:
    """Append the feature-map outputs to ``proto``'s graph in place and return them with their per-image shapes.

    The shapes come from ONNX shape inference; each output is typed ``[batch_axis, C, H, W]``. Raises ValueError
    if the graph has no Conv node, a new name is taken already, or a shape is not known to the inference.
    """
    graph = proto.graph
    tapped = _feature_map_tensors(graph)
    if not tapped:
        raise ValueError("activation outputs were asked for, but the graph has no Conv node")
    taken = {name for node in graph.node for name in (*node.input, *node.output)}
    taken |= {v.name for v in (*graph.input, *graph.output)}
    outputs = []
    for index, tensor in enumerate(tapped, start=1):
        layer = f"conv{index}"
        name = OUTPUT_PREFIX + layer
        if name in taken:
            raise ValueError(f"the graph already has a tensor named {name!r}")
        graph.node.append(helper.make_node("Identity", [tensor], [name], name=name))
        graph.output.append(helper.make_value_info(name, onnx.TypeProto()))
        outputs.append((layer, name))
    inferred = {v.name: v for v in onnx.shape_inference.infer_shapes(proto, strict_mode=True).graph.output}
    activations = []
    for layer, name in outputs:
        value_info = inferred[name]
        shape = _per_image_shape(value_info, batch_axis)
        _output_by_name(graph, name).type.CopyFrom(value_info.type)
        activations.append(ActivationOutput(layer=layer, output=name, shape=shape))
    return tuple(activations)


def _feature_map_tensors(graph: onnx.GraphProto) -> list[str]:
    """For each Conv in graph order: its activation's output if one directly follows, else its own output."""
    consumers: dict[str, list[onnx.NodeProto]] = defaultdict(list)
    for node in graph.node:
        for name in node.input:
            consumers[name].append(node)
    tensors = []
    for node in graph.node:
        if node.op_type != "Conv" or node.domain not in _ONNX_DOMAINS:
            continue
        tensor = node.output[0]
        following = consumers[tensor]
        if len(following) == 1 and _is_activation_of(following[0], tensor):
            tensor = following[0].output[0]
        tensors.append(tensor)
    return tensors


def _is_activation_of(node: onnx.NodeProto, tensor: str) -> bool:
    return node.op_type in ACTIVATION_OPS and node.domain in _ONNX_DOMAINS and node.input[0] == tensor


def _per_image_shape(value_info: onnx.ValueInfoProto, batch_axis: str) -> tuple[int, int, int]:
    dims = value_info.type.tensor_type.shape.dim
    if len(dims) == 4 and dims[0].dim_param == batch_axis and all(d.dim_value > 0 for d in dims[1:]):
        return (dims[1].dim_value, dims[2].dim_value, dims[3].dim_value)
    listed = [d.dim_param or d.dim_value or "?" for d in dims]
    raise ValueError(f"cannot tell the shape of {value_info.name}: shape inference gives {listed}")


def _output_by_name(graph: onnx.GraphProto, name: str) -> onnx.ValueInfoProto:
    return next(v for v in graph.output if v.name == name)
