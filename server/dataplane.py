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

from cnnserve.server.drain import CallGate
from cnnserve.server.errors import InvalidInputError, RepositoryChangesDisabledError, VersionRetiredError, status_of
from cnnserve.server.logs import call_deadline_passed, log_request
from cnnserve.server.metrics import UNKNOWN, RequestSeries, ServerMetrics
from cnnserve.server.model import ModelVersion
from cnnserve.server.preprocess import ImageInput
from cnnserve.server.readiness import Readiness
from cnnserve.server.repository import ServedVersions
from cnnserve.server.settings import ServerSettings
from cnnserve.server.statistics import RequestStatistics, current_request, start_request_statistics

_DECODE_INLINE_PIXELS = 512 * 512
"""Requests whose images hold up to this many pixels (by their headers) are decoded on the event loop; larger
ones in a worker thread, so that a small file claiming a large picture cannot stall every other request."""
_Result = TypeVar("_Result")


class DataPlane:
    def __init__(
        self,
        repository: ServedVersions,
        settings: ServerSettings,
        metrics: ServerMetrics,
        gate: CallGate | None = None,
    ) -> None:
        self.repository = repository
        self.settings = settings
        self.metrics = metrics
        self.gate = gate or CallGate()
        """Every call of every API passes it (`observe`); made by the server when its models need to know too."""
        self.readiness = Readiness(repository, settings.required_models)

    def deadline(self, model: ModelVersion, time_remaining: float | None) -> float:
        """The monotonic deadline of a call to `model`: its own, capped by the model's default timeout."""
        batching = model.batching if model.batching is not None else self.settings
        timeout = batching.default_timeout_seconds
        if time_remaining is not None:
            timeout = min(timeout, max(time_remaining, 0.0))
        return time.monotonic() + timeout

    def explanation_deadline(self, time_remaining: float | None) -> float:
        """The monotonic deadline of an Explain call: its own, capped by `max_explanation_seconds` (which is also
        the deadline of a call that sets none)."""
        limit = self.settings.max_explanation_seconds
        return time.monotonic() + (limit if time_remaining is None else min(limit, max(time_remaining, 0.0)))

    async def observe(
        self,
        api: str,
        name: str,
        version: int,
        handle: Callable[[ModelVersion], Awaitable[_Result]],
        *,
        model_statistics: bool = True,
    ) -> tuple[ModelVersion, _Result]:
        """Find the model and run `handle` on it, counting the outcome in statistics and metrics.

        Every API's request path goes through here, so requests, latencies and rejections are counted (and, with
        `request_log` on, logged) the same way whichever protocol they came in on. Errors propagate unchanged.
        Without `model_statistics` the request is left out of the model's Triton statistics (explanations: they
        are not inference requests there, though their batches count as executions).
        """
        started = time.perf_counter()
        model: ModelVersion | None = None
        series: RequestSeries | None = None
        code = grpc.StatusCode.OK
        error: Exception | None = None
        request_statistics = start_request_statistics()
        admitted = self.gate.arrive()
        try:
            if not admitted:
                await self.gate.refuse()
            model = self.repository.get(name, version)
            series = self.metrics.request_series(api, model.name, str(model.version))
            series.started()
            try:
                result = await handle(model)
            except VersionRetiredError:
                # A front-end chose the version from a catalog that a reload has just changed; the engine sent
                # the new catalog before this answer, so choosing again finds what serves now.
                series.abandoned()
                model = series = None
                model = self.repository.get(name, version)
                series = self.metrics.request_series(api, model.name, str(model.version))
                series.started()
                result = await handle(model)
        except asyncio.CancelledError:
            code = grpc.StatusCode.DEADLINE_EXCEEDED if call_deadline_passed() else grpc.StatusCode.CANCELLED
            raise
        except Exception as exc:
            code, error = status_of(exc), exc
            raise
        finally:
            if admitted:
                self.gate.leave()
            self._count(
                api,
                name,
                model,
                series,
                code,
                time.perf_counter() - started,
                error,
                request_statistics if model_statistics else None,
            )
        return model, result

    def _count(
        self,
        api: str,
        name: str,
        model: ModelVersion | None,
        series: RequestSeries | None,
        code: grpc.StatusCode,
        seconds: float,
        error: Exception | None,
        request_statistics: RequestStatistics | None,
    ) -> None:
        """Count a finished request in statistics (unless `request_statistics` is None) and metrics, and log it
        when the request log is on."""
        if model is None or series is None:
            label = name if next(self.repository.versions(name), None) is not None else UNKNOWN
            version = UNKNOWN
            self.metrics.request_failed(api, label, version, code)
        else:
            label, version = series.model, series.version
            if code is grpc.StatusCode.OK:
                series.succeeded(seconds)
                if request_statistics is not None:
                    model.statistics.record_success(seconds, request_statistics)
            else:
                series.failed(code)
                if request_statistics is not None:
                    model.statistics.record_failure(seconds)
        if self.settings.request_log:
            log_request(api=api, model=label, version=version, code=code, seconds=seconds, error=error)

    async def load_model(self, name: str) -> None:
        """Load or reload a model on request. Raises RepositoryChangesDisabledError when the server forbids it."""
        self._check_changes_allowed()
        await self.repository.load(name)

    async def unload_model(self, name: str) -> None:
        """Unload a model on request, after its queued requests finish."""
        self._check_changes_allowed()
        await self.repository.unload(name)

    def _check_changes_allowed(self) -> None:
        if not self.settings.allow_repository_changes:
            raise RepositoryChangesDisabledError(
                "loading and unloading models is disabled on this server (allow_repository_changes=false)"
            )

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
        model.refuse_if_full(len(images))
        assert model.preprocessor is not None
        started = time.perf_counter()
        prepared = model.preprocessor.prepare(images)
        if prepared.pixels > _DECODE_INLINE_PIXELS:
            inputs = await asyncio.to_thread(prepared.finish)
        else:
            inputs = prepared.finish()
        self.record_input(model, time.perf_counter() - started)
        return await model.infer(inputs, deadline)

    def record_input(self, model: ModelVersion, seconds: float) -> None:
        """Count the time one request spent turning its payload into the model's input, whatever the API."""
        current_request().compute_input += seconds
        self.metrics.preprocessed(model, seconds)
