"""Open Inference Protocol tensors: a ModelInferRequest's input as a numpy batch, probabilities as the response.

The fast path is `raw_input_contents`: the input's bytes are viewed by `numpy.frombuffer` without a copy and
only their shape, data type and length are checked. Typed `contents.fp32_contents` are accepted too, and so are
inputs and outputs in registered system shared memory regions (`shared_memory_region`, `_byte_size`, `_offset`
parameters, as Triton's clients set them): then no tensor bytes travel in the messages at all. Messages follow
Triton's wording, so people who know Triton recognise them.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from cnnserve.inference import grpc_service_pb2 as pb
from cnnserve.server.errors import InvalidInputError
from cnnserve.server.postprocess import top_k
from cnnserve.server.shared_memory import SystemSharedMemory, shared_memory_disabled

INPUT_NAME = "input"
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


def input_batch(
    request: pb.ModelInferRequest,
    input_shape: tuple[int, ...],
    model_name: str,
    max_rows: int,
    shared_memory: SystemSharedMemory | None = None,
) -> np.ndarray:
    """The request's single input as a float32 (N, C, H, W) array; a view of the raw bytes or of the shared memory
    region when sent so (no copy).

    Raises InvalidInputError for a wrong input count, name, data type, shape or byte length, or NaN/infinity.
    """
    if len(request.inputs) != 1:
        raise InvalidInputError(f"expected 1 inputs but got {len(request.inputs)} inputs for model '{model_name}'")
    tensor = request.inputs[0]
    if tensor.name != INPUT_NAME:
        raise InvalidInputError(
            f"unexpected inference input '{tensor.name}' for model '{model_name}'; its input is '{INPUT_NAME}'"
        )
    if tensor.datatype != "FP32":
        raise InvalidInputError(
            f"inference input '{INPUT_NAME}' data-type is '{tensor.datatype}', but model '{model_name}' expects 'FP32'"
        )
    shape = tuple(tensor.shape)
    if len(shape) != len(input_shape) + 1 or shape[1:] != input_shape or shape[0] < 1:
        raise InvalidInputError(
            f"unexpected shape for input '{INPUT_NAME}' for model '{model_name}'. "
            f"Expected {_shape_text((-1, *input_shape))}, got {_shape_text(shape)}"
        )
    if shape[0] > max_rows:
        raise InvalidInputError(
            f"inference request batch-size must be <= {max_rows} for '{model_name}', got {shape[0]}; split it"
        )
    elements = math.prod(shape)
    place = SharedMemoryPlace.of(tensor.parameters, INPUT_NAME)
    if place is not None:
        if request.raw_input_contents or tensor.HasField("contents"):
            raise InvalidInputError(
                f"input '{INPUT_NAME}' is in shared memory region '{place.region}'; do not also send it in the "
                "message (raw_input_contents or contents)"
            )
        if place.byte_size != 4 * elements:
            raise InvalidInputError(
                f"unexpected shared memory byte size {place.byte_size} for input '{INPUT_NAME}', expecting "
                f"{4 * elements} (FP32 {_shape_text(shape)})"
            )
        data = place.view(shared_memory, f"input '{INPUT_NAME}'")
        return _finite(np.frombuffer(data, dtype="<f4").reshape(shape))
    if request.raw_input_contents:
        if len(request.raw_input_contents) != 1:
            raise InvalidInputError(
                f"expected 1 raw_input_contents (one per input) but got {len(request.raw_input_contents)}"
            )
        if tensor.HasField("contents"):
            raise InvalidInputError(
                f"contents field must not be specified when using raw_input_contents for '{INPUT_NAME}' "
                f"for model '{model_name}'"
            )
        data = request.raw_input_contents[0]
        if len(data) != 4 * elements:
            raise InvalidInputError(
                f"unexpected total byte size {len(data)} for input '{INPUT_NAME}', expecting {4 * elements} "
                f"(FP32 {_shape_text(shape)})"
            )
        return _finite(np.frombuffer(data, dtype="<f4").reshape(shape))
    values = tensor.contents.fp32_contents
    if len(values) != elements:
        raise InvalidInputError(
            f"unexpected number of FP32 values {len(values)} for input '{INPUT_NAME}', expecting {elements} "
            f"(shape {_shape_text(shape)}); send them in contents.fp32_contents or raw_input_contents"
        )
    return _finite(np.asarray(values, dtype=np.float32).reshape(shape))


def _finite(batch: np.ndarray) -> np.ndarray:
    """`batch`, checked to hold no NaN or infinity (min and max propagate both, without a temporary array)."""
    if not (np.isfinite(batch.min()) and np.isfinite(batch.max())):
        raise InvalidInputError(f"input '{INPUT_NAME}' contains NaN or infinity; send finite FP32 values")
    return batch


def requested_outputs(request: pb.ModelInferRequest, model_name: str, label_count: int) -> list[RequestedOutput]:
    """What to answer with: every output when none is named; a classification asks for the top k labels."""
    if not request.outputs:
        return [RequestedOutput(OUTPUT_NAME, 0)]
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


def check_shared_memory_outputs(
    outputs: Sequence[RequestedOutput], rows: int, label_count: int, shared_memory: SystemSharedMemory | None
) -> None:
    """Refuse, before anything is computed, outputs whose shared memory place is missing or too small."""
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
