"""One measurement point against a running server: calls, latencies, batch sizes and CPU over one window.

The load generator's callers run from `start_at`; nothing is counted during the warm-up; the window's edges are
where this process reads the CPU times of the server, of each generator process and of the machine, and the
server's own image and batch counters. So every number of a point covers the same seconds.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from load_tests.bench._cpu import machine_busy_seconds, process_cpu_seconds, process_tree_cpu_seconds
from load_tests.bench.loadgen import LoadGenerator, LoadPlan
from load_tests.bench.results import LatencySummary, ServerPoint
from load_tests.bench.server import ModelCounters, ServerUnderTest

CLASSIFY_METHOD = "/cnnserve.v1.ImageClassifier/Classify"
HEALTH_CHECK_METHOD = "/grpc.health.v1.Health/Check"
INFER_METHOD = "/inference.GRPCInferenceService/ModelInfer"
START_DELAY_SECONDS = 0.3
"""Between handing out a plan and its start: time for the workers to open their connections."""


@dataclass(frozen=True)
class Window:
    warmup_seconds: float
    duration_seconds: float
    timeout_seconds: float = 30.0


@dataclass(frozen=True)
class _Snapshot:
    server_cpu: float
    generator_cpu: float
    machine_cpu: float
    counters: ModelCounters | None


def _snapshot(server: ServerUnderTest, generator: LoadGenerator, model: str | None) -> _Snapshot:
    return _Snapshot(
        server_cpu=process_tree_cpu_seconds(server.pid),
        generator_cpu=sum(process_cpu_seconds(pid) for pid in generator.pids),
        machine_cpu=machine_busy_seconds(),
        counters=server.counters(model) if model is not None else None,
    )


def _sleep_until(moment: float) -> None:
    remaining = moment - time.monotonic()
    if remaining > 0:
        time.sleep(remaining)


def measure_point(
    generator: LoadGenerator,
    server: ServerUnderTest,
    *,
    method: str,
    request: bytes,
    callers: int,
    window: Window,
    model: str | None,
    images_per_request: int = 1,
    connections: int = 1,
) -> ServerPoint:
    """Run `callers` closed-loop callers of `method` and summarise the window.

    With `model` given, the average batch size comes from that model's counters; without it (a health check)
    it is None. `connections` is the fewest HTTP/2 connections the callers share in all (spread over the
    generator's processes): a server of N processes sharing its port wants several per process.
    """
    if model is not None:
        server.wait_idle(model)
    start_at = time.monotonic() + START_DELAY_SECONDS
    window_start = start_at + window.warmup_seconds
    window_end = window_start + window.duration_seconds
    plan = LoadPlan(
        target=server.target,
        method=method,
        request=request,
        start_at=start_at,
        window_start=window_start,
        window_end=window_end,
        timeout_seconds=window.timeout_seconds,
        connections_per_process=max(1, -(-connections // generator.processes)),
    )
    running = generator.start(plan, callers)
    _sleep_until(window_start)
    before = _snapshot(server, generator, model)
    _sleep_until(window_end)
    after = _snapshot(server, generator, model)
    load = running.wait()
    seconds = window.duration_seconds
    average_batch = None
    if before.counters is not None and after.counters is not None:
        batches = after.counters.execution_count - before.counters.execution_count
        images = after.counters.inference_count - before.counters.inference_count
        average_batch = images / batches if batches > 0 else None
    requests = len(load.latencies)
    return ServerPoint(
        concurrency=callers,
        requests=requests,
        requests_per_second=requests / seconds,
        images_per_second=requests * images_per_request / seconds,
        latency=LatencySummary.of(load.latencies),
        average_batch_size=average_batch,
        errors=dict(load.errors),
        server_cpu_cores=(after.server_cpu - before.server_cpu) / seconds,
        generator_cpu_cores=(after.generator_cpu - before.generator_cpu) / seconds,
        machine_cpu_cores=(after.machine_cpu - before.machine_cpu) / seconds,
    )


def health_check_request() -> bytes:
    """A grpc.health.v1 Check of the whole server: the cheapest call a cnnserve answers."""
    from grpc_health.v1 import health_pb2

    return health_pb2.HealthCheckRequest(service="").SerializeToString()
