"""What every API does the same way: find the model, preprocess, batch, infer, count.

The gRPC services translate their own messages to and from these calls and do nothing else, so the image API
and the Open Inference Protocol share one path through the batcher, one set of statistics and one set of
metrics.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

import grpc
import numpy as np
from cnnserve.server.errors import InvalidInputError, ModelNotFoundError, status_of
from cnnserve.server.metrics import ServerMetrics
from cnnserve.server.model import ModelVersion
from cnnserve.server.preprocess import FloatTensor, ImageInput
from cnnserve.server.repository import ModelRepository
from cnnserve.server.settings import ServerSettings

_DECODE_INLINE_BYTES = 64 * 1024
"""Encoded payloads up to this size are decoded on the event loop; larger ones in a worker thread."""
_REJECTION_REASONS = {
    grpc.StatusCode.RESOURCE_EXHAUSTED: "queue_full",
    grpc.StatusCode.DEADLINE_EXCEEDED: "deadline_exceeded",
    grpc.StatusCode.INVALID_ARGUMENT: "invalid_input",
    grpc.StatusCode.UNAVAILABLE: "unavailable",
}
_Result = TypeVar("_Result")


class DataPlane:
    def __init__(self, repository: ModelRepository, settings: ServerSettings, metrics: ServerMetrics) -> None:
        self.repository = repository
        self.settings = settings
        self.metrics = metrics

    def deadline(self, time_remaining: float | None) -> float:
        """The monotonic deadline of a call: its own, capped by the default timeout."""
        timeout = self.settings.batching.default_timeout_seconds
        if time_remaining is not None:
            timeout = min(timeout, max(time_remaining, 0.0))
        return time.monotonic() + timeout

    async def observe(
        self, api: str, name: str, version: int, handle: Callable[[ModelVersion], Awaitable[_Result]]
    ) -> tuple[ModelVersion, _Result]:
        """Find the model and run `handle` on it, counting the outcome in statistics and metrics.

        Every API's request path goes through here, so requests, latencies and rejections are counted the same
        way whichever protocol they came in on. Errors propagate unchanged.
        """
        started = time.perf_counter()
        model: ModelVersion | None = None
        label = "unknown"
        metrics = self.metrics
        try:
            model = self.repository.get(name, version)
            label = model.name
            result = await handle(model)
        except asyncio.CancelledError:
            metrics.requests.labels(label, api, "CANCELLED").inc()
            metrics.rejections.labels(label, "cancelled").inc()
            raise
        except Exception as exc:
            code = status_of(exc)
            metrics.requests.labels(label, api, code.name).inc()
            reason = _REJECTION_REASONS.get(code)
            if reason is not None and not isinstance(exc, ModelNotFoundError):
                metrics.rejections.labels(label, reason).inc()
            if model is not None:
                model.statistics.fail.add(time.perf_counter() - started)
            raise
        elapsed = time.perf_counter() - started
        model.statistics.success.add(elapsed)
        metrics.requests.labels(label, api, "OK").inc()
        metrics.request_latency.labels(label, api).observe(elapsed)
        return model, result

    async def classify_images(self, model: ModelVersion, images: Sequence[ImageInput], deadline: float) -> np.ndarray:
        """Probabilities (len(images), labels) for `images`, in order.

        Raises InvalidInputError for an empty or oversized request or an image that cannot be used, and whatever
        the batcher raises (queue full, deadline, unavailable, inference failure).
        """
        if not images:
            raise InvalidInputError("the request has no images; send at least one")
        limit = self.settings.max_images_per_request
        if len(images) > limit:
            raise InvalidInputError(f"the request has {len(images)} images; at most {limit} are accepted per call")
        assert model.preprocessor is not None
        started = time.perf_counter()
        encoded_bytes = sum(len(image) for image in images if isinstance(image, bytes))
        if encoded_bytes > _DECODE_INLINE_BYTES:
            inputs = await asyncio.to_thread(model.preprocessor.batch, images)
        else:
            inputs = model.preprocessor.batch(images)
        preprocess_seconds = time.perf_counter() - started
        model.statistics.compute_input.add(preprocess_seconds)
        if not (len(images) == 1 and isinstance(images[0], FloatTensor)):
            self.metrics.preprocess_latency.labels(model.name).observe(preprocess_seconds)
        return await model.infer(inputs, deadline)
