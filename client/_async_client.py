"""The asyncio client."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterable, AsyncIterator, Iterable
from types import TracebackType
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from cnnserve.client._base import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_CONCURRENCY,
    BaseClient,
    ClassifyOptions,
    ExplainMethodName,
    ExplainOptions,
    PendingBatch,
    check_many_arguments,
    chunks,
    health_status,
)
from cnnserve.client._config import (
    DEFAULT_EXPLAIN_TIMEOUT_SECONDS,
    DEFAULT_RETRY,
    DEFAULT_TARGET,
    DEFAULT_TIMEOUT_SECONDS,
    Keepalive,
    LoadBalancing,
    RetryPolicy,
    TLSConfig,
)
from cnnserve.client._images import ImageLike
from cnnserve.client._types import (
    Classification,
    ClassifyOutcome,
    Explanation,
    HealthStatus,
    ModelInfo,
    classifications_from,
    model_info_from,
)
from cnnserve.v1 import classifier_pb2 as pb
from cnnserve.v1 import classifier_pb2_grpc as pb_grpc


class AsyncClient(BaseClient):
    """Classify images with a cnnserve server from asyncio code; the same calls and settings as Client.

    >>> async with AsyncClient("127.0.0.1:8001") as client:
    ...     result = (await client.classify(["digit.png"], model="mnist_net"))[0]

    Create it inside the event loop that uses it (a gRPC asyncio channel belongs to one loop), and close it with
    `await client.aclose()` or `async with`.
    """

    def __init__(
        self,
        target: str = DEFAULT_TARGET,
        *,
        timeout: float | None = DEFAULT_TIMEOUT_SECONDS,
        retry: RetryPolicy | None = DEFAULT_RETRY,
        keepalive: Keepalive | None = None,
        tls: TLSConfig | None = None,
        auth_token: str | None = None,
        load_balancing: LoadBalancing = "round_robin",
        wait_for_ready: bool = False,
    ) -> None:
        super().__init__(
            target,
            timeout=timeout,
            retry=retry,
            keepalive=keepalive,
            tls=tls,
            auth_token=auth_token,
            load_balancing=load_balancing,
            wait_for_ready=wait_for_ready,
        )
        if self._credentials is None:
            self._channel = grpc.aio.insecure_channel(self.settings.target, options=self._options)
        else:
            self._channel = grpc.aio.secure_channel(self.settings.target, self._credentials, options=self._options)
        self._classifier = pb_grpc.ImageClassifierStub(self._channel)
        self._health = health_pb2_grpc.HealthStub(self._channel)

    async def classify(
        self,
        images: ImageLike | Iterable[ImageLike],
        *,
        model: str,
        top_k: int = 1,
        version: int = 0,
        return_probabilities: bool = False,
        timeout: float | None = None,
        request_id: str | None = None,
    ) -> list[Classification]:
        """Classify images in one request; see Client.classify. Images are read and encoded on this thread, so
        use classify_many (which encodes in a worker thread) for many files."""
        options = ClassifyOptions(model, version, top_k, return_probabilities)
        request = self._classify_request(images, options)
        try:
            response = await self._classifier.Classify(request, **self._call_arguments(timeout, request_id))
        except grpc.RpcError as error:
            raise self._error(error) from None
        return self._classifications(response, len(request.images))

    def classify_many(
        self,
        images: Iterable[ImageLike] | AsyncIterable[ImageLike],
        *,
        model: str,
        top_k: int = 1,
        version: int = 0,
        return_probabilities: bool = False,
        concurrency: int = DEFAULT_CONCURRENCY,
        batch_size: int = DEFAULT_BATCH_SIZE,
        timeout: float | None = None,
    ) -> AsyncIterator[ClassifyOutcome]:
        """Classify a large stream of images; see Client.classify_many. `images` may also be an async iterable.

        Use `async for outcome in client.classify_many(...)`. To stop early and cancel the requests in flight at
        once, iterate inside `contextlib.aclosing(...)`.
        """
        options = ClassifyOptions(model, version, top_k, return_probabilities)
        check_many_arguments(concurrency, batch_size)
        return self._classify_stream(images, options, concurrency, batch_size, timeout)

    async def explain(
        self,
        image: ImageLike,
        *,
        model: str,
        version: int = 0,
        label: str | None = None,
        method: ExplainMethodName = "occlusion",
        patch: int | None = None,
        stride: int | None = None,
        masks: int | None = None,
        cells: int | None = None,
        keep: float | None = None,
        seed: int = 0,
        max_rows: int | None = None,
        overlay_png: bool = False,
        layer: str | None = None,
        timeout: float | None = DEFAULT_EXPLAIN_TIMEOUT_SECONDS,
        request_id: str | None = None,
    ) -> Explanation:
        """Explain one image; see Client.explain. The image is read and encoded on this thread."""
        options = ExplainOptions(
            model, version, label, method, patch, stride, masks, cells, keep, seed, max_rows, overlay_png, layer
        )
        request = self._explain_request(image, options)
        try:
            response = await self._classifier.Explain(request, **self._call_arguments(timeout, request_id))
        except grpc.RpcError as error:
            raise self._error(error) from None
        return self._explanation(response)

    async def models(self, *, timeout: float | None = None, request_id: str | None = None) -> list[ModelInfo]:
        """Every model the server knows, with its versions, readiness and statistics."""
        try:
            answer = await self._classifier.ListModels(
                pb.ListModelsRequest(), **self._call_arguments(timeout, request_id)
            )
        except grpc.RpcError as error:
            raise self._error(error) from None
        return [model_info_from(info) for info in answer.models]

    async def model(self, name: str, *, timeout: float | None = None, request_id: str | None = None) -> ModelInfo:
        """One model; raises ModelNotFound when the server has no model of that name."""
        try:
            info = await self._classifier.GetModel(
                pb.GetModelRequest(name=name), **self._call_arguments(timeout, request_id)
            )
        except grpc.RpcError as error:
            raise self._error(error) from None
        return model_info_from(info)

    async def health(self, service: str = "", *, timeout: float | None = None) -> HealthStatus:
        """The server's grpc.health.v1 status; see Client.health."""
        try:
            answer = await self._health.Check(
                health_pb2.HealthCheckRequest(service=service), **self._call_arguments(timeout, None)
            )
        except grpc.RpcError as error:
            if error.code() == grpc.StatusCode.NOT_FOUND:
                return HealthStatus.SERVICE_UNKNOWN
            raise self._error(error) from None
        return health_status(answer)

    async def aclose(self) -> None:
        """Close the connections; calls still in flight are cancelled. Idempotent."""
        await self._channel.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def _classify_stream(
        self,
        images: Iterable[ImageLike] | AsyncIterable[ImageLike],
        options: ClassifyOptions,
        concurrency: int,
        batch_size: int,
        timeout: float | None,
    ) -> AsyncIterator[ClassifyOutcome]:
        in_flight: deque[asyncio.Task[list[ClassifyOutcome]]] = deque()
        try:
            async for chunk in _chunks(images, batch_size):
                in_flight.append(asyncio.create_task(self._classify_chunk(chunk, options, timeout)))
                if len(in_flight) >= concurrency:
                    outcomes = await in_flight[0]
                    in_flight.popleft()
                    for outcome in outcomes:
                        yield outcome
            while in_flight:
                outcomes = await in_flight[0]
                in_flight.popleft()
                for outcome in outcomes:
                    yield outcome
        finally:
            for task in in_flight:
                task.cancel()

    async def _classify_chunk(
        self, chunk: list[tuple[int, Any]], options: ClassifyOptions, timeout: float | None
    ) -> list[ClassifyOutcome]:
        batch = await asyncio.to_thread(PendingBatch.encode, chunk)
        await self._settle(batch, options, timeout)
        return batch.in_order()

    async def _settle(self, batch: PendingBatch, options: ClassifyOptions, timeout: float | None) -> None:
        """Send the batch and record its outcomes; a batch refused as invalid is resent image by image, one
        request at a time so that the concurrency bound holds."""
        if not batch.images:
            return
        try:
            response = await self._classifier.Classify(
                options.request(batch.images), **self._call_arguments(timeout, None)
            )
        except grpc.RpcError as rpc_error:
            error = self._error(rpc_error)
            if batch.should_split(error):
                parts = batch.singles()
                for part in parts:
                    await self._settle(part, options, timeout)
                batch.absorb(parts)
            else:
                batch.fail(error)
        else:
            batch.finish(classifications_from(response))


async def _chunks(
    images: Iterable[ImageLike] | AsyncIterable[ImageLike], size: int
) -> AsyncIterator[list[tuple[int, Any]]]:
    """(position, image) pairs in lists of `size`, from a plain or an async iterable, drawn lazily."""
    if not isinstance(images, AsyncIterable):
        for chunk in chunks(images, size):
            yield chunk
        return
    pending: list[tuple[int, Any]] = []
    position = 0
    async for image in images:
        pending.append((position, image))
        position += 1
        if len(pending) == size:
            yield pending
            pending = []
    if pending:
        yield pending
