"""Prometheus metrics, in the server's own registry, served on their own port (see `http_port`).

What operators decide from them, and which metric answers:

- scale out: `cnnserve_queue_wait_seconds` (the HPA's p95), `cnnserve_queue_depth`, `cnnserve_requests_in_flight`;
- page: `cnnserve_requests_total` by `code`, `cnnserve_rejections_total` by `reason`, `cnnserve_model_ready`,
  `cnnserve_model_load_failures_total`, `cnnserve_frontend_restarts_total`;
- does batching work: `cnnserve_batch_size` (a histogram of executed batches), and
  `cnnserve_inferences_total / cnnserve_executions_total`, the average batch size;
- where the time goes: `cnnserve_request_duration_seconds` (end to end, successful requests) split into
  `cnnserve_preprocess_duration_seconds`, `cnnserve_queue_wait_seconds` and `cnnserve_batch_compute_seconds`;
- explanations, apart from classifications: the request series with `api="explain"`, and
  `cnnserve_explanation_rows_total` (the forward passes they took, by method).

Histograms rather than summaries, so quantiles aggregate across replicas. Names are in base units under one
prefix. Label values are bounded: model names and versions from the repository (a request for a model the server
does not have counts as model="unknown"), API names, gRPC status codes, provider names and a fixed set of
rejection reasons; never request ids or anything else a client chooses.

The request path costs one cached lookup and a few additions to plain Python numbers (`RequestSeries`), which
reach prometheus_client at most every COUNT_FLUSH_SECONDS, and whenever /metrics is scraped (`flush_threadsafe`;
a multi-process server's engine first asks every front-end for its counts), so a scrape never misses a finished
request. In a multi-process server every prometheus_client update is a locked write to a memory-mapped file (with
a getpid call); made per request, or even once per event-loop iteration, they cost a front-end's event loop about
a tenth of its CPU per call (docs/benchmarks.md, "Less work per call"). Batch figures are counted the same way, and
queue depths and model states are read when Prometheus scrapes, so keeping them current costs nothing. (Being
read live, a queue depth may show a request that arrived after the scrape brought in the counts one scrape before
`cnnserve_requests_in_flight` does.)
"""

from __future__ import annotations

import asyncio
import os
import threading
from bisect import bisect_left
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from cnnserve.server.batcher import BatchRecord
    from cnnserve.server.model import ModelVersion

PREFIX = "cnnserve"
COUNT_FLUSH_SECONDS = 0.1
"""How long what the request path counts may wait before it is sent on: metrics to prometheus_client, and a
front-end's finished requests to the engine's statistics. Reads (a scrape, ModelStatistics) flush first."""
_SCRAPE_FLUSH_TIMEOUT_SECONDS = 1.0
UNKNOWN = "unknown"
"""The model and version label of requests for a model or version the server cannot serve."""
LATENCY_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
)  # fmt: skip
"""Seconds, from 100 µs (a cached tensor request) to 30 s (the default request timeout)."""
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)
"""Powers of two up to the largest max_batch_size the settings allow."""
REJECTION_REASONS = {
    grpc.StatusCode.RESOURCE_EXHAUSTED: "queue_full",
    grpc.StatusCode.DEADLINE_EXCEEDED: "deadline_exceeded",
    grpc.StatusCode.INVALID_ARGUMENT: "invalid_input",
    grpc.StatusCode.CANCELLED: "cancelled",
    grpc.StatusCode.UNAVAILABLE: "unavailable",
}
"""The statuses that mean a request was refused or abandoned rather than failed, and the reason label of each."""


class HistogramBuffer:
    """Observations of one histogram series kept as per-bucket counts and a sum until `flush` adds them, writing
    each touched bucket once.

    The result is what `observe` once per value gives (tests/server/test_metric_buffers.py compares the two). It
    reaches into prometheus_client's `Histogram` child: `_upper_bounds`, `_buckets` and `_sum`, unchanged since
    0.4; that test fails if they ever go.
    """

    __slots__ = ("_bounds", "_counts", "_histogram", "_sum", "queued")

    def __init__(self, histogram: Any) -> None:
        self._histogram = histogram
        self._bounds: list[float] = list(histogram._upper_bounds)
        self._counts = [0] * len(self._bounds)
        self._sum = 0.0
        self.queued = False
        """Waiting in `ServerMetrics`' list of series to flush."""

    def observe(self, value: float) -> None:
        # The first bucket whose upper bound is >= value, as Histogram.observe picks it.
        self._counts[bisect_left(self._bounds, value)] += 1
        self._sum += value

    def flush(self) -> None:
        counts, total = self._counts, self._sum
        if not any(counts):
            return
        self._counts, self._sum = [0] * len(counts), 0.0
        self._histogram._sum.inc(total)
        for bucket, count in zip(self._histogram._buckets, counts, strict=True):
            if count:
                bucket.inc(count)


class RequestSeries:
    """The series one (api, model, version) updates on every request: looked up once, then reused.

    Requests count into plain numbers here (`started`, `succeeded`, `failed`); the owning `ServerMetrics` adds
    them to prometheus_client (`ServerMetrics.flush`). Only the event loop's thread calls these.
    """

    __slots__ = (
        "_in_flight",
        "_in_flight_change",
        "_latency",
        "_metrics",
        "_ok",
        "_succeeded",
        "api",
        "model",
        "queued",
        "version",
    )

    def __init__(self, metrics: ServerMetrics, api: str, model: str, version: str) -> None:
        self._metrics = metrics
        self.api = api
        self.model = model
        self.version = version
        self._in_flight = metrics.requests_in_flight.labels(model, version, api)
        self._ok = metrics.requests.labels(model, version, api, grpc.StatusCode.OK.name)
        self._latency = HistogramBuffer(metrics.request_duration.labels(model, version, api))
        self._in_flight_change = 0
        self._succeeded = 0
        self.queued = False

    def started(self) -> None:
        """A request to this series began: it is in flight until `succeeded`, `failed` or `abandoned`."""
        self._in_flight_change += 1
        self._metrics.pending(self)

    def abandoned(self) -> None:
        """A started request left without an outcome here (it is counted again elsewhere)."""
        self._in_flight_change -= 1
        self._metrics.pending(self)

    def succeeded(self, seconds: float) -> None:
        self._in_flight_change -= 1
        self._succeeded += 1
        self._latency.observe(seconds)
        self._metrics.pending(self)

    def failed(self, code: grpc.StatusCode) -> None:
        """Count a request answered with `code` (not OK), and as a rejection when the code is one."""
        self._in_flight_change -= 1
        self._metrics.pending(self)
        self._metrics.request_failed(self.api, self.model, self.version, code)

    def flush(self) -> None:
        """Add what was counted since the last flush to prometheus_client."""
        if self._in_flight_change:
            self._in_flight.inc(self._in_flight_change)
            self._in_flight_change = 0
        if self._succeeded:
            self._ok.inc(self._succeeded)
            self._succeeded = 0
        self._latency.flush()


class _BatchSeries:
    """The series one version updates on every executed batch: looked up once, then reused; like
    `RequestSeries`, it counts into plain numbers that `ServerMetrics.flush` adds to prometheus_client."""

    __slots__ = ("_executions", "_inferences", "compute", "executions", "inferences", "queue_wait", "queued", "size")

    def __init__(self, metrics: ServerMetrics, model: str, version: str) -> None:
        self.size = HistogramBuffer(metrics.batch_size.labels(model, version))
        self.compute = HistogramBuffer(metrics.batch_compute.labels(model, version))
        self.queue_wait = HistogramBuffer(metrics.queue_wait.labels(model, version))
        self.inferences = metrics.inferences.labels(model, version)
        self.executions = metrics.executions.labels(model, version)
        self._inferences = 0
        self._executions = 0
        self.queued = False

    def executed(self, record: BatchRecord) -> None:
        self.size.observe(record.size)
        self.compute.observe(record.compute_seconds)
        for wait in record.queue_wait_seconds:
            self.queue_wait.observe(wait)
        self._inferences += record.size
        self._executions += 1

    def flush(self) -> None:
        self.size.flush()
        self.compute.flush()
        self.queue_wait.flush()
        if self._executions:
            self.inferences.inc(self._inferences)
            self.executions.inc(self._executions)
            self._inferences = self._executions = 0


class _ServedVersionsOnly(Collector):
    """Every process's metrics from the multiprocess files, without the series of versions no longer served.

    prometheus_client cannot delete a series from those files, so a version retired by a reload or an unload is
    left out here instead, as `ServerMetrics.model_unloaded` removes it in a single-process server.
    """

    def __init__(self, directory: Path, versions: Callable[[], Iterable[ModelVersion]]) -> None:
        self._files = MultiProcessCollector(None, path=str(directory))
        self._versions = versions

    def collect(self) -> Iterable[Any]:
        served = {(v.name, str(v.version)) for v in self._versions()}
        for family in self._files.collect():
            family.samples = [
                sample
                for sample in family.samples
                if "version" not in sample.labels
                or sample.labels["version"] == UNKNOWN
                or (sample.labels.get("model"), sample.labels["version"]) in served
            ]
            yield family


class _ModelCollector(Collector):
    """Queue depths and model readiness, read from the models when Prometheus scrapes.

    Read rather than pushed, so the figures cannot go stale: a version that failed to load reports not ready, a
    version retired by a reload disappears instead of reporting not ready forever.
    """

    def __init__(self, versions: Callable[[], Iterable[ModelVersion]]) -> None:
        self.versions = versions

    def collect(self) -> Iterable[GaugeMetricFamily]:
        versions = list(self.versions())
        depth = GaugeMetricFamily(
            f"{PREFIX}_queue_depth", "Images waiting in a model version's batch queue", labels=["model", "version"]
        )
        ready = GaugeMetricFamily(
            f"{PREFIX}_model_ready",
            "1 when the model version serves requests, 0 when it failed to load or is unloading",
            labels=["model", "version", "provider"],
        )
        load = GaugeMetricFamily(
            f"{PREFIX}_model_load_seconds",
            "How long the model version took to load and warm up",
            labels=["model", "version"],
        )
        for version in versions:
            labels = [version.name, str(version.version)]
            ready.add_metric([*labels, version.provider or "none"], 1.0 if version.ready else 0.0)
            if version.batcher is not None:
                depth.add_metric(labels, version.batcher.queued_rows)
            if version.ready:
                load.add_metric(labels, version.load_seconds)
        yield depth
        yield ready
        yield load


def frontend_restarts(registry: CollectorRegistry | None) -> Counter:
    """`cnnserve_frontend_restarts_total`: front-end processes the supervisor started again after one exited.

    Every process of a server exports it (at 0: a single-process server's stays there); the supervisor counts
    into its own, and /metrics sums every process's. Kubernetes does not see such restarts (the container keeps
    running), so this is how an operator learns that front-ends die.
    """
    return Counter(
        f"{PREFIX}_frontend_restarts",
        "Front-end processes the supervisor started again after one died or exited (--frontends)",
        registry=registry,
    )


class ServerMetrics:
    """Every metric the server exports; one instance per server process.

    Call `watch_models` once with the repository's version listing, `serve` to start the HTTP endpoint, and the
    event methods (`request_series`, `preprocessed`, `batch_executed`, `model_loaded`, `model_unloaded`) from
    the code that sees the events.
    """

    def __init__(self) -> None:
        # `_created` series double what Prometheus stores and no query here uses them.
        disable_created_metrics()
        self.registry = CollectorRegistry(auto_describe=True)
        for collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
            self.registry.register(collector)
        r = self.registry
        self.requests = Counter(
            f"{PREFIX}_requests",
            "Finished inference requests, by gRPC status code",
            ["model", "version", "api", "code"],
            registry=r,
        )
        self.requests_in_flight = Gauge(
            f"{PREFIX}_requests_in_flight",
            "Inference requests being served right now (preprocessing, queued or computing)",
            ["model", "version", "api"],
            registry=r,
            multiprocess_mode="livesum",
        )
        self.request_duration = Histogram(
            f"{PREFIX}_request_duration_seconds",
            "End-to-end latency of successful requests inside the server",
            ["model", "version", "api"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.preprocess_duration = Histogram(
            f"{PREFIX}_preprocess_duration_seconds",
            "Image decoding and preprocessing, per request",
            ["model", "version"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_wait = Histogram(
            f"{PREFIX}_queue_wait_seconds",
            "Time a request waited in the batch queue before its batch started",
            ["model", "version"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_compute = Histogram(
            f"{PREFIX}_batch_compute_seconds",
            "Inference time per executed batch",
            ["model", "version"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            f"{PREFIX}_batch_size",
            "Images per executed batch",
            ["model", "version"],
            buckets=BATCH_SIZE_BUCKETS,
            registry=r,
        )
        self.inferences = Counter(
            f"{PREFIX}_inferences",
            "Images run through the model (rows of executed batches)",
            ["model", "version"],
            registry=r,
        )
        self.executions = Counter(
            f"{PREFIX}_executions", "Batches executed (model runs)", ["model", "version"], registry=r
        )
        self.rejections = Counter(
            f"{PREFIX}_rejections",
            "Requests refused or abandoned, by reason: " + ", ".join(REJECTION_REASONS.values()),
            ["model", "reason"],
            registry=r,
        )
        self.load_failures = Counter(
            f"{PREFIX}_model_load_failures",
            "Model versions (or whole models, when their config.toml is unusable) that failed to load",
            ["model"],
            registry=r,
        )
        self.explanation_rows = Counter(
            f"{PREFIX}_explanation_rows",
            "Forward passes run for explanations (perturbed copies and the unchanged image), by method",
            ["model", "version", "method"],
            registry=r,
        )
        self.frontend_restarts = frontend_restarts(r)
        self._series: dict[tuple[str, str, str], RequestSeries] = {}
        self._preprocess_series: dict[tuple[str, int], HistogramBuffer] = {}
        self._pending: list[RequestSeries | HistogramBuffer | _BatchSeries] = []
        """What counted since the last flush; flushed within COUNT_FLUSH_SECONDS."""
        self._flush_timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._batch_series: dict[tuple[str, int], _BatchSeries] = {}

    def model_load_started(self, name: str) -> None:
        """Export model `name`'s load-failure count from its first load on (at 0), so that increases show."""
        self.load_failures.labels(name)

    def model_load_failed(self, name: str) -> None:
        """Count a failed load of model `name` (a repository name: a bounded label)."""
        self.load_failures.labels(name).inc()

    def watch_models(self, versions: Callable[[], Iterable[ModelVersion]]) -> None:
        """Export queue depth, readiness and load time of whatever `versions()` lists at each scrape."""
        self._model_collector = _ModelCollector(versions)
        self.registry.register(self._model_collector)

    def all_processes_registry(self, directory: Path) -> CollectorRegistry:
        """What the engine of a multi-process server exports: every process's metrics summed (prometheus_client's
        multiprocess mode; each process writes its values to files in `directory`), and the engine's models.

        Process, platform and garbage-collector metrics are the engine's own: they describe one process and do
        not sum.
        """
        registry = CollectorRegistry(auto_describe=True)
        for collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
            registry.register(collector)
        registry.register(_ServedVersionsOnly(directory, self._model_collector.versions))
        registry.register(self._model_collector)
        return registry

    def request_series(self, api: str, model: str, version: str) -> RequestSeries:
        """The series of requests to `model` `version` over `api`; model and version must be bounded labels."""
        key = (api, model, version)
        series = self._series.get(key)
        if series is None:
            series = self._series[key] = RequestSeries(self, api, model, version)
        return series

    def request_failed(self, api: str, model: str, version: str, code: grpc.StatusCode) -> None:
        """Count a request answered with `code` (not OK), and as a rejection when the code is one.

        For requests that never reached a model, `model` is its name when the repository knows it, else UNKNOWN,
        and `version` is UNKNOWN.
        """
        self.requests.labels(model, version, api, code.name).inc()
        reason = REJECTION_REASONS.get(code)
        if reason is not None:
            self.rejections.labels(model, reason).inc()

    def preprocessed(self, model: ModelVersion, seconds: float) -> None:
        """Count one request's time turning its payload into model input (on the event loop's thread)."""
        key = (model.name, model.version)
        series = self._preprocess_series.get(key)
        if series is None:
            histogram = self.preprocess_duration.labels(model.name, str(model.version))
            series = self._preprocess_series[key] = HistogramBuffer(histogram)
        series.observe(seconds)
        self.pending(series)

    def pending(self, series: RequestSeries | HistogramBuffer | _BatchSeries) -> None:
        """`series` has counts to add: flush them within COUNT_FLUSH_SECONDS (at once when no loop runs in this
        thread)."""
        if series.queued:
            return
        series.queued = True
        self._pending.append(series)
        if self._flush_timer is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                self.flush()
                return
            self._loop = loop
            self._flush_timer = loop.call_later(COUNT_FLUSH_SECONDS, self.flush)

    def flush(self) -> None:
        """Add everything counted on the request path since the last flush to prometheus_client (on the thread
        that counted it: the event loop's)."""
        if self._flush_timer is not None:
            self._flush_timer.cancel()
            self._flush_timer = None
        pending, self._pending = self._pending, []
        for series in pending:
            series.queued = False
            series.flush()

    def flush_threadsafe(self, timeout: float = _SCRAPE_FLUSH_TIMEOUT_SECONDS) -> None:
        """`flush` from another thread (the metrics port's, before a scrape), waiting up to `timeout` seconds for
        the event loop to run it."""
        loop = self._loop
        if loop is None:
            return
        # Even with nothing pending, wait for the loop: it may be in the middle of a flush, and a scrape now
        # would read some series written and others not.
        done = threading.Event()

        def flush_and_tell() -> None:
            try:
                self.flush()
            finally:
                done.set()

        try:
            loop.call_soon_threadsafe(flush_and_tell)
        except RuntimeError:  # the loop is closed: nothing runs on it any more
            return
        done.wait(timeout)

    def explained(self, model: ModelVersion, method: str, rows: int) -> None:
        """Count the forward passes of one finished explanation."""
        self.explanation_rows.labels(model.name, str(model.version), method).inc(rows)

    def batch_executed(self, model: str, version: int, record: BatchRecord) -> None:
        """Count one executed batch (failed ones too: they ran, and their callers waited), on the event loop's
        thread."""
        series = self._batch_series.get((model, version))
        if series is None:
            series = self._batch_series[model, version] = _BatchSeries(self, model, str(version))
        series.executed(record)
        self.pending(series)

    def model_loaded(self, model: ModelVersion) -> None:
        """Start the model's rejection counters at zero, so the first rejection shows in rate() and increase()."""
        for reason in REJECTION_REASONS.values():
            self.rejections.labels(model.name, reason)

    def model_unloaded(self, model: ModelVersion) -> None:
        """Drop the series of a version that stopped serving, so reloads do not pile up series forever.

        In a multi-process server the series stay: prometheus_client's multiprocess files cannot remove them.
        """
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            return
        labels = {"model": model.name, "version": str(model.version)}
        for metric in (
            self.requests,
            self.requests_in_flight,
            self.request_duration,
            self.preprocess_duration,
            self.queue_wait,
            self.batch_compute,
            self.batch_size,
            self.inferences,
            self.executions,
        ):
            metric.remove_by_labels(labels)
        for key in [key for key in self._series if key[1:] == (model.name, str(model.version))]:
            del self._series[key]
        self._preprocess_series.pop((model.name, model.version), None)
        self._batch_series.pop((model.name, model.version), None)
