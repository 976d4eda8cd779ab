"""What a model's graph says about itself: its inputs and outputs, and the operator its output comes from.

ONNX Runtime reports the inputs and outputs (names, shapes, element types) and the ``metadata_props``, but not
the nodes, and the server does not depend on the `onnx` package. So the two facts it needs from the file (does
the output come out of a Softmax, a LogSoftmax or a Sigmoid? which files hold weights stored outside it?) are
read from its protobuf wire format directly: ModelProto.graph, its nodes' inputs, outputs and op_type, the
graph's output names, and its initializers' external data locations. Weights are skipped without being
decoded. A file this reader does not understand gives no final operator, never an error: ONNX Runtime has
already accepted the model by then.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

PASS_THROUGH_OPS = frozenset({"Identity", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Cast", "Dropout"})
"""Operators that keep a classifier's scores as they are; the final operator is looked for behind them."""

_MODEL_GRAPH, _GRAPH_NODE, _GRAPH_INITIALIZER, _GRAPH_OUTPUT = 7, 1, 5, 12
_TENSOR_EXTERNAL_DATA, _ENTRY_KEY, _ENTRY_VALUE = 13, 1, 2
_NODE_INPUT, _NODE_OUTPUT, _NODE_OP_TYPE, _NODE_DOMAIN = 1, 2, 4, 7
_VALUE_NAME = 1
_ONNX_DOMAINS = ("", "ai.onnx")


class _Argument(Protocol):
    name: str
    shape: Sequence[Any]
    type: str


class _Session(Protocol):
    """What is used of an onnxruntime.InferenceSession."""

    def get_inputs(self) -> Sequence[_Argument]: ...
    def get_outputs(self) -> Sequence[_Argument]: ...
    def get_modelmeta(self) -> Any: ...


Dimension = int | str | None
"""A fixed size, a symbolic one (its name), or unknown."""

ELEMENT_TYPES = {"tensor(float)": "float32", "tensor(uint8)": "uint8"}
"""ONNX Runtime's element types that cnnserve feeds, by the names `cnnserve.metadata.InputType` uses."""


@dataclass(frozen=True)
class Tensor:
    """One input or output of the graph, as ONNX Runtime reports it."""

    name: str
    shape: tuple[Dimension, ...]
    element_type: str
    """ONNX Runtime's spelling, e.g. ``tensor(float)``."""

    def fixed(self, axis: int) -> int | None:
        """The size of `axis` when the graph fixes it, else None."""
        size = self.shape[axis]
        return size if isinstance(size, int) and size > 0 else None

    def describe(self) -> str:
        dims = ", ".join(str(d) if isinstance(d, int) and d > 0 else (d or "?") for d in self.shape)
        return f"{self.name!r} {self.element_type} [{dims}]"


@dataclass(frozen=True)
class GraphSignature:
    """A graph's inputs, outputs and metadata, and for each output the operator that computes it."""

    inputs: tuple[Tensor, ...]
    outputs: tuple[Tensor, ...]
    metadata_props: Mapping[str, str] = field(default_factory=dict)
    final_ops: Mapping[str, str] = field(default_factory=dict)
    """Output name -> op_type of the node that computes it, looking through `PASS_THROUGH_OPS`; an output
    whose producer could not be read is absent."""
    external_data: tuple[str, ...] = ()
    """Files beside the model that hold some of its weights, as the model names them (relative to its folder):
    torch.onnx.export writes ``<model>.onnx.data`` by default."""

    @classmethod
    def read(cls, session: _Session, model_file: Path) -> GraphSignature:
        """The signature of the model `session` was created from, `model_file`."""
        inputs = tuple(_tensor(argument) for argument in session.get_inputs())
        outputs = tuple(_tensor(argument) for argument in session.get_outputs())
        props = dict(session.get_modelmeta().custom_metadata_map)
        try:
            final_ops, external = read_model_file(model_file.read_bytes())
        except (OSError, ValueError, IndexError):
            final_ops, external = {}, ()
        return cls(inputs, outputs, props, final_ops, external)


def _tensor(argument: _Argument) -> Tensor:
    shape = tuple(d if isinstance(d, int | str) else None for d in argument.shape)
    return Tensor(argument.name, shape, argument.type)


def read_model_file(model: bytes) -> tuple[dict[str, str], tuple[str, ...]]:
    """From a serialised ModelProto: graph output name -> the op_type computing it (through `PASS_THROUGH_OPS`),
    and the external data files of the graph's initializers, in order of first mention.

    Raises ValueError (or IndexError) for bytes that are not a protobuf message.
    """
    data = memoryview(model)
    graph = next((value for number, value in _fields(data) if number == _MODEL_GRAPH), None)
    if not isinstance(graph, memoryview):
        return {}, ()
    producers: dict[str, tuple[str, str]] = {}
    outputs: list[str] = []
    external: dict[str, None] = {}
    for number, value in _fields(graph):
        if number == _GRAPH_INITIALIZER and isinstance(value, memoryview):
            external.update(dict.fromkeys(_external_locations(value)))
        elif number == _GRAPH_NODE and isinstance(value, memoryview):
            op_type, domain, first_input, node_outputs = _node(value)
            for name in node_outputs:
                producers[name] = (op_type if domain in _ONNX_DOMAINS else f"{domain}.{op_type}", first_input)
        elif number == _GRAPH_OUTPUT and isinstance(value, memoryview):
            outputs.extend(_text(v) for n, v in _fields(value) if n == _VALUE_NAME and isinstance(v, memoryview))
    found = {}
    for output in outputs:
        name, seen = output, set()
        while name in producers and name not in seen:
            seen.add(name)
            op_type, first_input = producers[name]
            if op_type not in PASS_THROUGH_OPS:
                found[output] = op_type
                break
            name = first_input
    return found, tuple(external)


def _external_locations(tensor: memoryview) -> list[str]:
    locations = []
    for number, entry in _fields(tensor):
        if number == _TENSOR_EXTERNAL_DATA and isinstance(entry, memoryview):
            fields = {n: _text(v) for n, v in _fields(entry) if isinstance(v, memoryview)}
            if fields.get(_ENTRY_KEY) == "location" and _ENTRY_VALUE in fields:
                locations.append(fields[_ENTRY_VALUE])
    return locations


def _node(data: memoryview) -> tuple[str, str, str, list[str]]:
    op_type = domain = first_input = ""
    outputs: list[str] = []
    for number, value in _fields(data):
        if not isinstance(value, memoryview):
            continue
        if number == _NODE_OP_TYPE:
            op_type = _text(value)
        elif number == _NODE_DOMAIN:
            domain = _text(value)
        elif number == _NODE_OUTPUT:
            outputs.append(_text(value))
        elif number == _NODE_INPUT and not first_input:
            first_input = _text(value)
    return op_type, domain, first_input, outputs


def _text(data: memoryview) -> str:
    return bytes(data).decode("utf-8", errors="replace")


def _fields(data: memoryview) -> Iterator[tuple[int, int | memoryview]]:
    """(field number, value) of a protobuf message: varints as ints, length-delimited fields as views (not
    copied, so the weights cost nothing to skip), fixed-width fields skipped as their position only."""
    position, end = 0, len(data)
    while position < end:
        key, position = _varint(data, position)
        number, wire_type = key >> 3, key & 7
        if wire_type == 0:
            value, position = _varint(data, position)
            yield number, value
        elif wire_type == 2:
            length, position = _varint(data, position)
            if position + length > end:
                raise ValueError("a length-delimited field runs past the end of its message")
            yield number, data[position : position + length]
            position += length
        elif wire_type == 1:
            position += 8
        elif wire_type == 5:
            position += 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wire_type}")


def _varint(data: memoryview, position: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        byte = data[position]
        position += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, position
        shift += 7
        if shift > 63:
            raise ValueError("a varint longer than 64 bits")
