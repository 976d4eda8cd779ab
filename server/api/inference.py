"""The Open Inference Protocol (KServe v2 / Triton gRPC): `inference.GRPCInferenceService` over the DataPlane.

Triton's and KServe's clients work against cnnserve unchanged. ModelInfer runs through the same DataPlane and
batcher as the image API, so requests from both protocols batch together and share statistics and metrics.
System shared memory (Triton's extension: tensors in /dev/shm regions the client registers) is on unless
`--no-allow-shared-memory`. The RPCs cnnserve does not implement (CUDA shared memory, trace and log settings)
are not registered, so gRPC answers them UNIMPLEMENTED.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as package_version

import grpc

from cnnserve.inference import grpc_service_pb2 as pb
from cnnserve.inference import grpc_service_pb2_grpc as pb_grpc
from cnnserve.server.api.errors import grpc_errors
from cnnserve.server.api.inference_models import (
    find_model,
    index_entry,
    input_datatype_of,
    input_name_of,
    input_shape_of,
    label_count_of,
    model_config,
    model_metadata,
    statistics_of,
    unknown_model,
    version_number,
)
from cnnserve.server.api.inference_tensors import (
    DEFAULT_OUTPUTS,
    check_shared_memory_outputs,
    infer_response,
    input_batch,
    integer_parameter,
    model_input_of,
    probabilities_response,
    requested_outputs,
)
from cnnserve.server.dataplane import DataPlane
from cnnserve.server.errors import (
    CnnserveError,
    InvalidInputError,
    ModelNotFoundError,
    UnavailableError,
)
from cnnserve.server.model import ModelVersion
from cnnserve.server.shared_memory import SystemSharedMemory, shared_memory_disabled

API = "inference"
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name
EXTENSIONS = ("classification", "model_configuration", "model_repository", "schedule_policy", "statistics")
"""The protocol extensions ServerMetadata announces, with Triton's names (and "system_shared_memory" when on)."""
STREAM_WINDOW = 64
"""Requests of one ModelStreamInfer call in flight at once; the stream stops reading beyond it (backpressure)."""
_log = logging.getLogger(__name__)


def _server_version() -> str:
    try:
        return package_version("cnnserve")
    except PackageNotFoundError:
        return "0+unknown"


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    SERIALIZED_ANSWERS = frozenset({"ModelInfer"})
    """Methods that may answer with their response already serialized (server/api/registration.py)."""

    def __init__(self, dataplane: DataPlane, shared_memory: SystemSharedMemory | None = None) -> None:
        self._dataplane = dataplane
        self._repository = dataplane.repository
        self._shared_memory = shared_memory
        extensions = (*EXTENSIONS, "system_shared_memory") if shared_memory is not None else EXTENSIONS
        self._metadata = pb.ServerMetadataResponse(name="cnnserve", version=_server_version(), extensions=extensions)

    @grpc_errors
    async def ServerLive(
        self, request: pb.ServerLiveRequest, context: grpc.aio.ServicerContext
    ) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    @grpc_errors
    async def ServerReady(
        self, request: pb.ServerReadyRequest, context: grpc.aio.ServicerContext
    ) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self._dataplane.readiness.ready)

    @grpc_errors
    async def ModelReady(
        self, request: pb.ModelReadyRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelReadyResponse:
        try:
            model = self._repository.get(request.name, version_number(request.version))
        except (ModelNotFoundError, UnavailableError):
            return pb.ModelReadyResponse(ready=False)
        return pb.ModelReadyResponse(ready=model.ready)

    @grpc_errors
    async def ServerMetadata(
        self, request: pb.ServerMetadataRequest, context: grpc.aio.ServicerContext
    ) -> pb.ServerMetadataResponse:
        return self._metadata

    @grpc_errors
    async def ModelMetadata(
        self, request: pb.ModelMetadataRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelMetadataResponse:
        model = find_model(self._repository, request.name, request.version)
        return model_metadata(self._repository, model)

    @grpc_errors
    async def ModelConfig(
        self, request: pb.ModelConfigRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelConfigResponse:
        model = find_model(self._repository, request.name, request.version)
        return pb.ModelConfigResponse(config=model_config(model))

    @grpc_errors
    async def ModelStatistics(
        self, request: pb.ModelStatisticsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelStatisticsResponse:
        await self._repository.refresh_statistics()
        return statistics_of(self._repository, request.name, request.version)

    @grpc_errors
    async def RepositoryIndex(
        self, request: pb.RepositoryIndexRequest, context: grpc.aio.ServicerContext
    ) -> pb.RepositoryIndexResponse:
        entries = [index_entry(entry) for entry in self._repository.index()]
        if request.ready:
            entries = [entry for entry in entries if entry.state == "READY"]
        return pb.RepositoryIndexResponse(models=entries)

    @grpc_errors
    async def RepositoryModelLoad(
        self, request: pb.RepositoryModelLoadRequest, context: grpc.aio.ServicerContext
    ) -> pb.RepositoryModelLoadResponse:
        if request.parameters:
            raise InvalidInputError(
                f"cnnserve loads models only from the repository's files; load parameters "
                f"{sorted(request.parameters)} are not supported (edit {request.model_name}/config.toml instead)"
            )
        await self._dataplane.load_model(request.model_name)
        return pb.RepositoryModelLoadResponse()

    @grpc_errors
    async def RepositoryModelUnload(
        self, request: pb.RepositoryModelUnloadRequest, context: grpc.aio.ServicerContext
    ) -> pb.RepositoryModelUnloadResponse:
        await self._dataplane.unload_model(request.model_name)
        return pb.RepositoryModelUnloadResponse()

    @grpc_errors
    async def SystemSharedMemoryRegister(
        self, request: pb.SystemSharedMemoryRegisterRequest, context: grpc.aio.ServicerContext
    ) -> pb.SystemSharedMemoryRegisterResponse:
        shared_memory = self._shared_memory_or_refuse()
        region = shared_memory.register(request.name, request.key, request.offset, request.byte_size)
        try:
            await self._repository.region_registered(region.name, region.key, region.offset, region.byte_size)
        except BaseException:
            shared_memory.unregister(region.name)
            raise
        _log.info(
            "registered shared memory region %r: %d bytes of %s at %d",
            region.name,
            region.byte_size,
            region.key,
            region.offset,
        )
        return pb.SystemSharedMemoryRegisterResponse()

    @grpc_errors
    async def SystemSharedMemoryStatus(
        self, request: pb.SystemSharedMemoryStatusRequest, context: grpc.aio.ServicerContext
    ) -> pb.SystemSharedMemoryStatusResponse:
        response = pb.SystemSharedMemoryStatusResponse()
        for region in self._shared_memory_or_refuse().status(request.name):
            response.regions[region.name].CopyFrom(
                pb.SystemSharedMemoryStatusResponse.RegionStatus(
                    name=region.name, key=region.key, offset=region.offset, byte_size=region.byte_size
                )
            )
        return response

    @grpc_errors
    async def SystemSharedMemoryUnregister(
        self, request: pb.SystemSharedMemoryUnregisterRequest, context: grpc.aio.ServicerContext
    ) -> pb.SystemSharedMemoryUnregisterResponse:
        self._shared_memory_or_refuse().unregister(request.name)
        await self._repository.region_unregistered(request.name)
        return pb.SystemSharedMemoryUnregisterResponse()

    def _shared_memory_or_refuse(self) -> SystemSharedMemory:
        if self._shared_memory is None:
            raise shared_memory_disabled()
        return self._shared_memory

    @grpc_errors
    async def ModelInfer(
        self, request: pb.ModelInferRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelInferResponse | bytes:
        return await self._infer(request, context.time_remaining(), serialized=True)

    async def ModelStreamInfer(
        self, request_iterator: AsyncIterator[pb.ModelInferRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.ModelStreamInferResponse]:
        """Answer each request of the stream once, in the order they came, while up to STREAM_WINDOW run at once.

        Requests run concurrently, so the requests of one stream batch together. A failed request is answered
        with its `error_message` (and its id), as Triton does; the stream itself goes on.
        """
        window = asyncio.Semaphore(STREAM_WINDOW)
        pending: asyncio.Queue[asyncio.Task[pb.ModelStreamInferResponse] | None] = asyncio.Queue()

        async def read_requests() -> None:
            try:
                async for request in request_iterator:
                    await window.acquire()
                    pending.put_nowait(asyncio.create_task(self._stream_answer(request, context)))
            finally:
                pending.put_nowait(None)

        reader = asyncio.create_task(read_requests())
        try:
            while (answer := await pending.get()) is not None:
                response = await answer
                window.release()
                yield response
            await reader
        finally:
            reader.cancel()
            while not pending.empty():
                leftover = pending.get_nowait()
                if leftover is not None:
                    leftover.cancel()

    async def _stream_answer(
        self, request: pb.ModelInferRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelStreamInferResponse:
        try:
            response = await self._infer(request, context.time_remaining())
            assert isinstance(response, pb.ModelInferResponse)
        except CnnserveError as exc:
            return self._stream_error(request, str(exc))
        except Exception as exc:
            _log.exception("unexpected error in ModelStreamInfer")
            return self._stream_error(request, f"internal error: {exc.__class__.__name__}: {exc}")
        return pb.ModelStreamInferResponse(infer_response=response)

    @staticmethod
    def _stream_error(request: pb.ModelInferRequest, message: str) -> pb.ModelStreamInferResponse:
        failed = pb.ModelInferResponse(
            model_name=request.model_name, model_version=request.model_version, id=request.id
        )
        return pb.ModelStreamInferResponse(error_message=message, infer_response=failed)

    async def _infer(
        self, request: pb.ModelInferRequest, time_remaining: float | None, serialized: bool = False
    ) -> pb.ModelInferResponse | bytes:
        """Run one inference request; raises CnnserveError (Triton's message for an unknown model).

        The request's `timeout` parameter (microseconds, as Triton's) shortens the call's own deadline; its
        `priority` goes to the batcher, which checks it against the model's priority levels. With `serialized`,
        the usual answer (the probabilities in the message) comes already serialized, as bytes, which the
        service's registration sends as they are (server/api/registration.py).
        """
        dataplane = self._dataplane
        version = version_number(request.model_version)
        max_rows = dataplane.settings.max_images_per_request

        async def handle(model: ModelVersion) -> pb.ModelInferResponse | bytes:
            assert model.metadata is not None
            started = time.perf_counter()
            remaining = time_remaining
            priority = 0
            if parameters := request.parameters:
                timeout_us = integer_parameter(parameters, "timeout", minimum=0)
                if timeout_us:
                    remaining = timeout_us / 1e6 if remaining is None else min(remaining, timeout_us / 1e6)
                priority = integer_parameter(parameters, "priority", minimum=0) or 0
            deadline = dataplane.deadline(model, remaining)
            label_count = label_count_of(model)
            outputs = requested_outputs(request, model.name, label_count)
            model_input = model_input_of(input_name_of(model), input_datatype_of(model), input_shape_of(model))
            inputs = input_batch(request, model_input, model.name, max_rows, self._shared_memory)
            check_shared_memory_outputs(outputs, len(inputs), label_count, self._shared_memory)
            dataplane.record_input(model, time.perf_counter() - started)
            probabilities = await model.infer(inputs, deadline, priority)
            if serialized and outputs is DEFAULT_OUTPUTS:
                return probabilities_response(request, model.name, model.version, probabilities)
            labels = model.metadata.labels
            return infer_response(
                request, model.name, model.version, probabilities, labels, outputs, self._shared_memory
            )

        try:
            _, response = await dataplane.observe(API, request.model_name, version, handle)
        except ModelNotFoundError as exc:
            raise unknown_model(request.model_name, version) from exc
        return response
