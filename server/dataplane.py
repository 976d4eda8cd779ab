"""What every API does the same way: find the model, preprocess, batch, infer, count.

The gRPC services translate their own messages to and from these calls and do nothing else, so the image API
and the Open Inference Protocol share one path through the batcher.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

import numpy as np
from cnnserve.server.errors import InvalidInputError
from cnnserve.server.metrics import ServerMetrics
from cnnserve.server.model import ModelVersion
from cnnserve.server.preprocess import FloatTensor, ImageInput
from cnnserve.server.repository import ModelRepository
from cnnserve.server.settings import ServerSettings

_DECODE_INLINE_BYTES = 64 * 1024
"""Encoded payloads up to this size are decoded on the event loop; larger ones in a worker thread."""


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
        if not (len(images) == 1 and isinstance(images[0], FloatTensor)):
            self.metrics.preprocess_latency.labels(model.name).observe(time.perf_counter() - started)
        probabilities = await model.infer(inputs, deadline)
        model.request_count += 1
        return probabilities
