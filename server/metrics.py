"""Prometheus metrics, in the server's own registry, served on their own port.

Histograms rather than summaries, so operators can aggregate quantiles across replicas. Label values are model
names, versions, API names and status codes only: bounded cardinality, no request ids. Counting happens per
batch where it can (batch size, compute, queue waits), so the per-request cost stays one counter and one
histogram observation.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    start_http_server,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

    from cnnserve.server.batcher import BatchRecord
    from cnnserve.server.model import ModelVersion

PREFIX = "cnnserve"
LATENCY_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class _QueueDepthCollector(Collector):
    """Reads queue depths when scraped, so enqueueing costs nothing extra."""

    def __init__(self, depths: Callable[[], Iterable[tuple[str, str, int]]]) -> None:
        self._depths = depths

    def collect(self) -> Iterable[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            f"{PREFIX}_queue_depth", "Images waiting in a model's batch queue", labels=["model", "version"]
        )
        for model, version, depth in self._depths():
            family.add_metric([model, version], depth)
        yield family


class ServerMetrics:
    """Every metric the server exports; one instance per server."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        for collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
            self.registry.register(collector)
        r = self.registry
        self.requests = Counter(f"{PREFIX}_requests", "Finished requests", ["model", "api", "code"], registry=r)
        self.request_latency = Histogram(
            f"{PREFIX}_request_duration_seconds",
            "End-to-end request latency inside the server",
            ["model", "api"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.preprocess_latency = Histogram(
            f"{PREFIX}_preprocess_duration_seconds",
            "Image decoding and preprocessing per request",
            ["model"],
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
        self.compute = Histogram(
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
        self.inferences = Counter(f"{PREFIX}_inferences", "Images inferred", ["model", "version"], registry=r)
        self.executions = Counter(f"{PREFIX}_executions", "Batches executed", ["model", "version"], registry=r)
        self.model_ready = Gauge(
            f"{PREFIX}_model_ready",
            "1 when the model version serves",
            ["model", "version", "provider"],
            registry=r,
        )
        self.model_load_seconds = Gauge(
            f"{PREFIX}_model_load_seconds",
            "Time it took to load and warm up",
            ["model", "version"],
            registry=r,
        )
        self.rejections = Counter(
            f"{PREFIX}_rejections", "Requests refused, by reason", ["model", "reason"], registry=r
        )

    def watch_queues(self, depths: Callable[[], Iterable[tuple[str, str, int]]]) -> None:
        self.registry.register(_QueueDepthCollector(depths))

    def serve(self, host: str, port: int) -> int:
        """Serve /metrics over HTTP in a daemon thread; returns the bound port (useful with port 0)."""
        server, _thread = start_http_server(port, addr=host, registry=self.registry)
        return int(server.server_port)

    def model_loaded(self, model: ModelVersion) -> None:
        version = str(model.version)
        self.model_ready.labels(model.name, version, model.provider).set(1)
        self.model_load_seconds.labels(model.name, version).set(model.load_seconds)

    def model_unloaded(self, model: ModelVersion) -> None:
        self.model_ready.labels(model.name, str(model.version), model.provider).set(0)

    def batch_executed(self, model: str, version: int, record: BatchRecord) -> None:
        labels = (model, str(version))
        self.batch_size.labels(*labels).observe(record.size)
        self.compute.labels(*labels).observe(record.compute_seconds)
        self.inferences.labels(*labels).inc(record.size)
        self.executions.labels(*labels).inc()
        queue_wait = self.queue_wait.labels(*labels)
        for wait in record.queue_wait_seconds:
            queue_wait.observe(wait)
