"""A tensor in system shared memory for the benchmark: the way a client on the server's host sends no bytes.

The bench puts one batch of model inputs into a POSIX shared memory object (a file in /dev/shm), registers it
with the server over the Open Inference Protocol, and every call of a point then only points into it. The
object is unregistered and removed when the point is done, whatever happened.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import grpc
import numpy as np

from cnnserve.inference import grpc_service_pb2 as pb
from cnnserve.inference import grpc_service_pb2_grpc as pb_grpc

SHARED_MEMORY_ROOT = Path("/dev/shm")


def shared_memory_available() -> bool:
    return SHARED_MEMORY_ROOT.is_dir() and os.access(SHARED_MEMORY_ROOT, os.W_OK)


@contextmanager
def registered_region(target: str, name: str, data: np.ndarray) -> Iterator[str]:
    """`data` in a new shared memory object, registered with the server at `target` as region `name`."""
    key = f"/cnnserve_bench_{os.getpid()}_{name}"
    path = SHARED_MEMORY_ROOT / key[1:]
    path.write_bytes(np.ascontiguousarray(data).tobytes())
    try:
        with grpc.insecure_channel(target) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            stub.SystemSharedMemoryRegister(
                pb.SystemSharedMemoryRegisterRequest(name=name, key=key, byte_size=data.nbytes), timeout=10
            )
            try:
                yield name
            finally:
                with suppress(grpc.RpcError):
                    stub.SystemSharedMemoryUnregister(pb.SystemSharedMemoryUnregisterRequest(name=name), timeout=10)
    finally:
        path.unlink(missing_ok=True)


def infer_request(model: str, batch: np.ndarray, region: str | None = None) -> pb.ModelInferRequest:
    """A ModelInfer request for `batch` (float32 N x C x H x W): raw in the message, or pointing into `region`."""
    tensor = pb.ModelInferRequest.InferInputTensor(name="input", datatype="FP32", shape=list(batch.shape))
    request = pb.ModelInferRequest(model_name=model, inputs=[tensor])
    if region is None:
        request.raw_input_contents.append(np.ascontiguousarray(batch, dtype="<f4").tobytes())
    else:
        tensor = request.inputs[0]
        tensor.parameters["shared_memory_region"].string_param = region
        tensor.parameters["shared_memory_byte_size"].int64_param = batch.nbytes
    return request
