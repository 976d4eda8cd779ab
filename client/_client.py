"""The blocking client."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator
from types import TracebackType
from typing import TypeAlias

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

ClassifyFuture: TypeAlias = "grpc.Future[pb.ClassifyResponse]"


class Client(BaseClient):
    """Classify images with a cnnserve server, blocking until each answer arrives.

    >>> with Client("127.0.0.1:8001") as client:
    ...     result = client.classify(["digit.png"], model="mnist_net")[0]
    ...     print(result.label, result.probability)

    `target` is any gRPC target; `dns:///cnnserve-headless.default.svc:8001` spreads calls over every replica.
    Every call has a deadline (`timeout` seconds unless the call says otherwise; explain has a longer default of
    its own), and calls that fail with UNAVAILABLE or RESOURCE_EXHAUSTED are retried by gRPC with backoff inside
    that deadline (`retry=None` turns that off). A client is safe to share between threads; close it (or use
    `with`) to close its connections.
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
            self._channel = grpc.insecure_channel(self.settings.target, options=self._options)
        else:
            self._channel = grpc.secure_channel(self.settings.target, self._credentials, options=self._options)
        self._classifier = pb_grpc.ImageClassifierStub(self._channel)
        self._health = health_pb2_grpc.HealthStub(self._channel)

    def classify(
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
        """Classify images in one request: one Classification per image, in order.

        `images` is a list (or any iterable) of paths, PNG/JPEG bytes, PIL images and numpy arrays, or one lone
        path, bytes or PIL image. Raises ImageError, before sending anything, for an image that cannot be read;
        a StatusError subclass (InvalidInput, ModelNotFound, ...) when the call fails. For thousands of images
        use classify_many, which batches, overlaps requests and reports failures per image.
        """
        options = ClassifyOptions(model, version, top_k, return_probabilities)
        request = self._classify_request(images, options)
        try:
            response = self._classifier.Classify(request, **self._call_arguments(timeout, request_id))
        except grpc.RpcError as error:
            raise self._error(error) from None
        return self._classifications(response, len(request.images))

    def classify_many(
        self,
        images: Iterable[ImageLike],
        *,
        model: str,
        top_k: int = 1,
        version: int = 0,
        return_probabilities: bool = False,
        concurrency: int = DEFAULT_CONCURRENCY,
        batch_size: int = DEFAULT_BATCH_SIZE,
        timeout: float | None = None,
    ) -> Iterator[ClassifyOutcome]:
        """Classify a large stream of images: one ClassifyOutcome per image, in input order, as they complete.

        Images are drawn from `images` lazily, `batch_size` per request, with at most `concurrency` requests in
        flight, so memory stays bounded however long the stream. A failure is reported on the outcomes it
        concerns and the rest carry on: an unreadable image fails alone before sending, a request refused as
        INVALID_ARGUMENT is resent image by image to isolate the broken ones, and any other error (after gRPC's
        retries) fails the images of that request only. `timeout` is per request. Stopping early (break, or
        closing the iterator) cancels the requests still in flight.
        """
        options = ClassifyOptions(model, version, top_k, return_probabilities)
        check_many_arguments(concurrency, batch_size)
        return self._classify_stream(images, options, concurrency, batch_size, timeout)

    def explain(
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
        """Explain one image: a saliency map of where the model looked for `label` (its top-1 label by default), or
        what one of its convolution layers computed.

        `image` is one path, encoded bytes, PIL image or uint8 array, as `classify` takes (not a float32 model
        input: the map is drawn on the picture). `method` is "occlusion" (a patch slid over the image, `patch`
        pixels wide, moved `stride` pixels at a time), "rise" (`masks` random smooth masks on a `cells` x `cells`
        grid keeping each cell with probability `keep`, drawn from `seed` so that a request always gives the same
        map) or "activations" (the feature maps of `layer`, one of `ModelInfo.activation_layers`, the first when
        None, as a PNG grid in `activations_png`, with no saliency map; only for models exported with activation
        outputs). An option left None takes the server's default; the options of another method raise
        ValueError. `max_rows` caps the forward passes (the server's own cap when None); `overlay_png` also asks
        for the map blended over the image, as PNG bytes (not for "activations", which has no map).

        The deadline is `timeout` seconds, 60 by default rather than the client's timeout, because an explanation
        is hundreds of forward passes that yield to every classification; None takes the client's timeout.
        Raises ValueError for bad options and ImageError for an unusable image, before sending; a StatusError
        subclass when the call fails: InvalidInput also when the method needs more forward passes than
        `max_rows` allows, or when the model has no activation outputs or no such layer.
        """
        options = ExplainOptions(
            model, version, label, method, patch, stride, masks, cells, keep, seed, max_rows, overlay_png, layer
        )
        request = self._explain_request(image, options)
        try:
            response = self._classifier.Explain(request, **self._call_arguments(timeout, request_id))
        except grpc.RpcError as error:
            raise self._error(error) from None
        return self._explanation(response)

    def models(self, *, timeout: float | None = None, request_id: str | None = None) -> list[ModelInfo]:
        """Every model the server knows, with its versions, readiness and statistics."""
        try:
            answer = self._classifier.ListModels(pb.ListModelsRequest(), **self._call_arguments(timeout, request_id))
        except grpc.RpcError as error:
            raise self._error(error) from None
        return [model_info_from(info) for info in answer.models]

    def model(self, name: str, *, timeout: float | None = None, request_id: str | None = None) -> ModelInfo:
        """One model; raises ModelNotFound when the server has no model of that name."""
        try:
            info = self._classifier.GetModel(pb.GetModelRequest(name=name), **self._call_arguments(timeout, request_id))
        except grpc.RpcError as error:
            raise self._error(error) from None
        return model_info_from(info)

    def health(self, service: str = "", *, timeout: float | None = None) -> HealthStatus:
        """The server's grpc.health.v1 status: of the whole server by default, or of one service by name.
        Raises Unavailable when no server answers."""
        try:
            answer = self._health.Check(
                health_pb2.HealthCheckRequest(service=service), **self._call_arguments(timeout, None)
            )
        except grpc.RpcError as error:
            if error.code() == grpc.StatusCode.NOT_FOUND:
                return HealthStatus.SERVICE_UNKNOWN
            raise self._error(error) from None
        return health_status(answer)

    def close(self) -> None:
        """Close the connections; calls still in flight are cancelled. Idempotent."""
        self._channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _classify_stream(
        self,
        images: Iterable[ImageLike],
        options: ClassifyOptions,
        concurrency: int,
        batch_size: int,
        timeout: float | None,
    ) -> Iterator[ClassifyOutcome]:
        in_flight: deque[tuple[PendingBatch, ClassifyFuture | None]] = deque()
        try:
            for chunk in chunks(images, batch_size):
                batch = PendingBatch.encode(chunk)
                in_flight.append((batch, self._send(batch, options, timeout)))
                if len(in_flight) >= concurrency:
                    yield from self._settle_oldest(in_flight, options, timeout)
            while in_flight:
                yield from self._settle_oldest(in_flight, options, timeout)
        finally:
            for _, future in in_flight:
                if future is not None:
                    future.cancel()

    def _settle_oldest(
        self,
        in_flight: deque[tuple[PendingBatch, ClassifyFuture | None]],
        options: ClassifyOptions,
        timeout: float | None,
    ) -> list[ClassifyOutcome]:
        """The oldest batch's outcomes; it leaves `in_flight` only once settled, so an interrupted wait still
        cancels it."""
        outcomes = self._settle(*in_flight[0], options, timeout)
        in_flight.popleft()
        return outcomes

    def _send(self, batch: PendingBatch, options: ClassifyOptions, timeout: float | None) -> ClassifyFuture | None:
        """Start the batch's request without waiting; None when none of its images could be encoded."""
        if not batch.images:
            return None
        future: ClassifyFuture = self._classifier.Classify.future(
            options.request(batch.images), **self._call_arguments(timeout, None)
        )
        return future

    def _settle(
        self, batch: PendingBatch, future: ClassifyFuture | None, options: ClassifyOptions, timeout: float | None
    ) -> list[ClassifyOutcome]:
        """Wait for the batch's answer and turn it into outcomes; a batch refused as invalid is resent image by
        image, one request at a time so that the concurrency bound holds."""
        if future is not None:
            try:
                response = future.result()
            except grpc.RpcError as rpc_error:
                error = self._error(rpc_error)
                if batch.should_split(error):
                    parts = batch.singles()
                    for part in parts:
                        self._settle(part, self._send(part, options, timeout), options, timeout)
                    batch.absorb(parts)
                else:
                    batch.fail(error)
            else:
                batch.finish(classifications_from(response))
        return batch.in_order()
