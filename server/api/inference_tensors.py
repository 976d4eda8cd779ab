"""Open Inference Protocol tensors: a ModelInferRequest's input as a numpy batch, probabilities as the response.

The input is the model's graph input as ModelMetadata describes it: its name ("input" for the models cnnserve
exports, the graph's own for imported ones), FP32 or UINT8, and a layout-aware shape. The fast path is
`raw_input_contents`: the input's bytes are viewed by `numpy.frombuffer` without a copy and only their shape,
data type and length are checked. Typed contents are accepted too (`fp32_contents`, or `uint_contents` for UINT8
as KServe's protocol puts them), and so are inputs and outputs in registered system shared memory regions
(`shared_memory_region`, `_byte_size`, `_offset` parameters, as Triton's clients set them): then no tensor bytes
travel in the messages at all. Messages follow Triton's wording, so people who know Triton recognise them, and
say what the model takes. Values are passed to the model as they come, NaN and infinity included, as Triton
passes them (its perf_analyzer sends random bytes by default); the image API, which builds its own tensors, is
where inputs are checked to be finite.
"""

from __future__ import annotations

import functools
import math
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from cnnserve.inference import grpc_service_pb2 as pb
from cnnserve.server.api import wire
from cnnserve.server.errors import InvalidInputError
from cnnserve.server.postprocess import top_k
from cnnserve.server.shared_memory import SystemSharedMemory, shared_memory_disabled

OUTPUT_NAME = "output"
CLASSIFICATION = "classification"
_SHARED_MEMORY = "shared_memory_region"
_SHARED_MEMORY_BYTE_SIZE = "shared_memory_byte_size"
_SHARED_MEMORY_OFFSET = "shared_memory_offset"
_Parameter = bool | int | float | str | None


def parameter_value(parameter: pb.InferParameter) -> _Parameter:
    kind = parameter.WhichOneof("parameter_choice")
    return None if kind is None else getattr(parameter, kind)


def integer_parameter(parameters: Mapping[str, pb.InferParameter], name: str, *, minimum: int) -> int | None:
    """The integer parameter `name` (int64 or uint64), None when absent; InvalidInputError for anything else."""
    if name not in parameters:
        return None
    value = parameter_value(parameters[name])
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise InvalidInputError(f"parameter '{name}' must be an integer >= {minimum}, got {value!r}")
    return value


@dataclass(frozen=True, slots=True)
class SharedMemoryPlace:
    """Where a tensor lies in a registered region: `byte_size` bytes at `offset`."""

    region: str
    byte_size: int
    offset: int

    @classmethod
    def of(cls, parameters: Mapping[str, pb.InferParameter], tensor: str) -> SharedMemoryPlace | None:
        """The place the parameters name, None when the tensor is not in shared memory."""
        if _SHARED_MEMORY not in parameters:
            return None
        region = parameter_value(parameters[_SHARED_MEMORY])
        if not isinstance(region, str) or not region:
            raise InvalidInputError(f"'{_SHARED_MEMORY}' of '{tensor}' must name a registered region")
        byte_size = integer_parameter(parameters, _SHARED_MEMORY_BYTE_SIZE, minimum=0)
        if byte_size is None:
            raise InvalidInputError(
                f"'{tensor}' is in shared memory region '{region}' but has no '{_SHARED_MEMORY_BYTE_SIZE}'"
            )
        offset = integer_parameter(parameters, _SHARED_MEMORY_OFFSET, minimum=0) or 0
        return cls(region, byte_size, offset)

    def view(self, shared_memory: SystemSharedMemory | None, purpose: str) -> memoryview:
        if shared_memory is None:
            raise shared_memory_disabled()
        return shared_memory.get(self.region).view(self.offset, self.byte_size, purpose)


@dataclass(frozen=True, slots=True)
class RequestedOutput:
    name: str
    classification: int
    """Top-k labels as BYTES strings when > 0; the probabilities tensor when 0."""
    shared_memory: SharedMemoryPlace | None = None
    """Where to write the probabilities instead of the response, when the client asked for that."""


def _shape_text(shape: Sequence[int]) -> str:
    return "[" + ",".join(str(d) for d in shape) + "]"


@dataclass(frozen=True, slots=True)
class _ElementType:
    """How one protocol data type travels: its numpy type (little-endian in raw bytes) and its typed-contents
    field (KServe's: UINT8 values in `uint_contents`, FP32 in `fp32_contents`; `bytes_contents` is for BYTES)."""

    dtype: np.dtype
    contents: str
    maximum: int | None = None
    """The largest value a typed-contents field may carry for it, when the field is wider than the type."""

    @property
    def item_size(self) -> int:
        return self.dtype.itemsize


_ELEMENT_TYPES = {
    "FP32": _ElementType(np.dtype("<f4"), "fp32_contents"),
    "UINT8": _ElementType(np.dtype("u1"), "uint_contents", maximum=255),
}


@dataclass(frozen=True, slots=True)
class ModelInput:
    """What a model's input takes on the protocol: its graph's input name, data type ("FP32" or "UINT8") and the
    shape of one row (layout-aware: [C, H, W] or [H, W, C]), as ModelMetadata advertises them."""

    name: str
    datatype: str
    shape: tuple[int, ...]

    def __post_init__(self) -> None:
        if self.datatype not in _ELEMENT_TYPES:
            raise ValueError(f"datatype must be one of {sorted(_ELEMENT_TYPES)}, got {self.datatype!r}")

    @property
    def element(self) -> _ElementType:
        return _ELEMENT_TYPES[self.datatype]

    def describe(self) -> str:
        """As a person would check it against ModelMetadata: "'images' (UINT8 [-1,16,16,3])"."""
        return f"'{self.name}' ({self.datatype} {_shape_text((-1, *self.shape))})"


@functools.lru_cache(maxsize=1024)
def model_input_of(name: str, datatype: str, shape: tuple[int, ...]) -> ModelInput:
    """The `ModelInput` of these, made once and kept (a model's input is asked for on every call)."""
    return ModelInput(name, datatype, shape)


def input_batch(
    request: pb.ModelInferRequest,
    model_input: ModelInput,
    model_name: str,
    max_rows: int,
    shared_memory: SystemSharedMemory | None = None,
) -> np.ndarray:
    """The request's single input as an (N, *model_input.shape) array of its data type (float32 or uint8); a view
    of the raw bytes or of the shared memory region when sent so (no copy).

    Raises InvalidInputError for a wrong input count, name, data type, shape, byte length or value count, saying
    what was sent and what the model takes. Any FP32 value is accepted, NaN and infinity included, as Triton
    accepts them; typed UINT8 values must be 0..255.
    """
    if len(request.inputs) != 1:
        raise InvalidInputError(
            f"expected 1 inputs but got {len(request.inputs)} inputs for model '{model_name}'; "
            f"it takes {model_input.describe()}"
        )
    tensor = request.inputs[0]
    name = model_input.name
    if tensor.name != name:
        raise InvalidInputError(
            f"unexpected inference input '{tensor.name}' for model '{model_name}'; its input is "
            f"{model_input.describe()} (see its ModelMetadata)"
        )
    if tensor.datatype != model_input.datatype:
        raise InvalidInputError(
            f"inference input '{name}' data-type is '{tensor.datatype}', but model '{model_name}' expects "
            f"'{model_input.datatype}'"
        )
    shape = tuple(tensor.shape)
    if len(shape) != len(model_input.shape) + 1 or shape[1:] != model_input.shape or shape[0] < 1:
        raise InvalidInputError(
            f"unexpected shape for input '{name}' for model '{model_name}'. "
            f"Expected {_shape_text((-1, *model_input.shape))}, got {_shape_text(shape)}"
        )
    if shape[0] > max_rows:
        raise InvalidInputError(
            f"inference request batch-size must be <= {max_rows} for '{model_name}', got {shape[0]}; split it"
        )
    element = model_input.element
    expected_bytes = element.item_size * math.prod(shape)
    place = SharedMemoryPlace.of(tensor.parameters, name) if tensor.parameters else None
    if place is not None:
        if request.raw_input_contents or tensor.HasField("contents"):
            raise InvalidInputError(
                f"input '{name}' is in shared memory region '{place.region}'; do not also send it in the "
                "message (raw_input_contents or contents)"
            )
        if place.byte_size != expected_bytes:
            raise InvalidInputError(
                f"unexpected shared memory byte size {place.byte_size} for input '{name}', expecting "
                f"{expected_bytes} ({model_input.datatype} {_shape_text(shape)})"
            )
        data = place.view(shared_memory, f"input '{name}'")
        return np.frombuffer(data, dtype=element.dtype).reshape(shape)
    raw = request.raw_input_contents
    if raw:
        if len(raw) != 1:
            raise InvalidInputError(f"expected 1 raw_input_contents (one per input) but got {len(raw)}")
        if tensor.HasField("contents"):
            raise InvalidInputError(
                f"contents field must not be specified when using raw_input_contents for '{name}' "
                f"for model '{model_name}'"
            )
        data = raw[0]
        if len(data) != expected_bytes:
            raise InvalidInputError(
                f"unexpected total byte size {len(data)} for input '{name}', expecting {expected_bytes} "
                f"({model_input.datatype} {_shape_text(shape)})"
            )
        return np.frombuffer(data, dtype=element.dtype).reshape(shape)
    return _typed_contents(tensor, model_input, shape)


def _typed_contents(
    tensor: pb.ModelInferRequest.InferInputTensor, model_input: ModelInput, shape: tuple[int, ...]
) -> np.ndarray:
    """The values of `tensor.contents` in the field its data type travels in, checked for count and range."""
    element = model_input.element
    name, datatype = model_input.name, model_input.datatype
    elsewhere = [field.name for field, _ in tensor.contents.ListFields() if field.name != element.contents]
    if elsewhere:
        raise InvalidInputError(
            f"input '{name}' is {datatype}: send its values in contents.{element.contents} (or "
            f"raw_input_contents), not contents.{elsewhere[0]}"
        )
    values = getattr(tensor.contents, element.contents)
    elements = math.prod(shape)
    if len(values) != elements:
        raise InvalidInputError(
            f"unexpected number of {datatype} values {len(values)} for input '{name}', expecting {elements} "
            f"(shape {_shape_text(shape)}); send them in contents.{element.contents} or raw_input_contents"
        )
    if element.maximum is None:
        return np.asarray(values, dtype=element.dtype).reshape(shape)
    wide = np.asarray(values, dtype=np.uint64)
    if wide.size and int(wide.max()) > element.maximum:
        raise InvalidInputError(
            f"{datatype} values of input '{name}' must be 0..{element.maximum}, got {int(wide.max())}"
        )
    return wide.astype(element.dtype).reshape(shape)


DEFAULT_OUTPUTS = (RequestedOutput(OUTPUT_NAME, 0),)
"""What a request that names no output is answered with: the probabilities, in the message."""


def requested_outputs(request: pb.ModelInferRequest, model_name: str, label_count: int) -> Sequence[RequestedOutput]:
    """What to answer with: every output when none is named; a classification asks for the top k labels."""
    if not request.outputs:
        return DEFAULT_OUTPUTS
    requested = []
    for output in request.outputs:
        if output.name != OUTPUT_NAME:
            raise InvalidInputError(
                f"unexpected inference output '{output.name}' for model '{model_name}'; its output is '{OUTPUT_NAME}'"
            )
        k = integer_parameter(output.parameters, CLASSIFICATION, minimum=1)
        place = SharedMemoryPlace.of(output.parameters, output.name)
        if place is not None and k:
            raise InvalidInputError(
                f"output '{output.name}': cnnserve writes probabilities to shared memory, not classification "
                "strings; ask for one or the other"
            )
        requested.append(RequestedOutput(output.name, min(k or 0, label_count), place))
    return requested


def classification_strings(probabilities: np.ndarray, k: int, labels: Sequence[str]) -> list[bytes]:
    """Row by row, the k most probable as Triton writes them: b"probability:index:label", best first."""
    strings = []
    for row, indices in zip(probabilities, top_k(probabilities, k), strict=True):
        strings.extend(f"{row[i]:f}:{i}:{labels[i]}".encode() for i in indices)
    return strings


def serialize_bytes(elements: Sequence[bytes]) -> bytes:
    """A BYTES tensor's raw contents: each element as a 4-byte little-endian length, then its bytes."""
    return b"".join(struct.pack("<I", len(element)) + element for element in elements)


def infer_response(
    request: pb.ModelInferRequest,
    model_name: str,
    model_version: int,
    probabilities: np.ndarray,
    labels: Sequence[str],
    outputs: Sequence[RequestedOutput],
    shared_memory: SystemSharedMemory | None = None,
) -> pb.ModelInferResponse:
    """The response; outputs placed in shared memory are written there and answered with their shape only."""
    response = pb.ModelInferResponse(model_name=model_name, model_version=str(model_version), id=request.id)
    rows = len(probabilities)
    for output in outputs:
        if output.shared_memory is not None:
            _write_to_shared_memory(output, probabilities, shared_memory)
            response.outputs.add(name=output.name, datatype="FP32", shape=list(probabilities.shape))
        elif output.classification:
            response.outputs.add(name=output.name, datatype="BYTES", shape=[rows, output.classification])
            strings = classification_strings(probabilities, output.classification, labels)
            response.raw_output_contents.append(serialize_bytes(strings))
        else:
            response.outputs.add(name=output.name, datatype="FP32", shape=list(probabilities.shape))
            response.raw_output_contents.append(np.ascontiguousarray(probabilities, dtype="<f4").tobytes())
    return response


_ID = wire.key(pb.ModelInferResponse.DESCRIPTOR, "id", wire.LENGTH_DELIMITED)
_RAW_OUTPUT = wire.key(pb.ModelInferResponse.DESCRIPTOR, "raw_output_contents", wire.LENGTH_DELIMITED)


def probabilities_response(
    request: pb.ModelInferRequest, model_name: str, model_version: int, probabilities: np.ndarray
) -> bytes:
    """The serialized ModelInferResponse that `infer_response` builds for the default outputs (the probabilities
    in the message), made without building it.

    The parts that depend on the model and the rows only (names, version, the output's shape) are serialized
    once and kept; the request's id and the probabilities' bytes are appended as their own fields
    (server/api/wire.py), so every client reads what `infer_response` gives. Measured in a live front-end it cut
    the event loop's CPU per ModelInfer call by about 15% (docs/benchmarks.md, "Less work per call").
    """
    parts = [_response_head(model_name, model_version, probabilities.shape)]
    if request.id:
        parts.append(wire.length_delimited(_ID, request.id.encode()))
    parts.append(wire.length_delimited(_RAW_OUTPUT, np.ascontiguousarray(probabilities, dtype="<f4").tobytes()))
    return b"".join(parts)


@functools.lru_cache(maxsize=4096)
def _response_head(model_name: str, model_version: int, shape: tuple[int, ...]) -> bytes:
    return pb.ModelInferResponse(
        model_name=model_name,
        model_version=str(model_version),
        outputs=[pb.ModelInferResponse.InferOutputTensor(name=OUTPUT_NAME, datatype="FP32", shape=list(shape))],
    ).SerializeToString()


def check_shared_memory_outputs(
    outputs: Sequence[RequestedOutput], rows: int, label_count: int, shared_memory: SystemSharedMemory | None
) -> None:
    """Refuse, before anything is computed, outputs whose shared memory place is missing or too small."""
    if outputs is DEFAULT_OUTPUTS:
        return
    for output in outputs:
        if output.shared_memory is not None:
            _output_target(output, rows * label_count, shared_memory)


def _output_target(output: RequestedOutput, values: int, shared_memory: SystemSharedMemory | None) -> np.ndarray:
    """The FP32 values of `output`'s shared memory place, as a writable array of `values` elements."""
    assert output.shared_memory is not None
    place = output.shared_memory
    needed = 4 * values
    if place.byte_size < needed:
        raise InvalidInputError(
            f"shared memory size specified with the request for output '{output.name}' ({place.byte_size} bytes) "
            f"should be at least {needed} bytes to hold the results"
        )
    return np.frombuffer(place.view(shared_memory, f"output '{output.name}'"), dtype="<f4", count=values)


def _write_to_shared_memory(
    output: RequestedOutput, probabilities: np.ndarray, shared_memory: SystemSharedMemory | None
) -> None:
    _output_target(output, probabilities.size, shared_memory)[:] = probabilities.ravel()
