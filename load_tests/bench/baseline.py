"""Bare ONNX Runtime on this machine: the limit a server of the same model can approach but not pass.

The session is built the way the server builds its own (CPU provider, all graph optimisations, the same
intra-op thread setting), fed a ready float32 batch, and run back to back: no decoding, no copying into a batch,
no network. Several single-threaded sessions side by side (one per core, each on its own batches) are measured
too, because the server can run that way (`--instances`); the best images/s over all of it is the machine's
limit for the model.
"""

from __future__ import annotations

import resource
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from load_tests.bench._cpu import machine_busy_seconds
from load_tests.bench.results import BaselinePoint, LatencySummary

MIN_RUNS = 3
WARMUP_RUNS = 2


def _own_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


@dataclass(frozen=True)
class BaselineSettings:
    batch_sizes: tuple[int, ...]
    seconds_per_batch_size: float
    """Each batch size runs at least this long (and at least MIN_RUNS times)."""
    intra_op_threads: int = 0
    """As the server's --intra-op-threads: 0 lets ONNX Runtime choose (one thread per physical core)."""


def measure_onnxruntime(
    model_path: Path,
    settings: BaselineSettings,
    on_point: Callable[[BaselinePoint], None] | None = None,
) -> list[BaselinePoint]:
    """Images/s and per-batch latency of bare ONNX Runtime for each batch size, in this process."""
    session = _session(model_path, settings.intra_op_threads)
    model_input = session.get_inputs()[0]
    sample_shape = [int(d) for d in model_input.shape[1:]]
    rng = np.random.default_rng(0)
    points = []
    for batch_size in settings.batch_sizes:
        batch = rng.standard_normal((batch_size, *sample_shape), dtype=np.float32)
        feed = {model_input.name: batch}
        for _ in range(WARMUP_RUNS):
            session.run(None, feed)
        point = _time_runs(lambda feed=feed: session.run(None, feed), batch_size, settings.seconds_per_batch_size)
        points.append(point)
        if on_point is not None:
            on_point(point)
    return points


def measure_parallel_sessions(
    model_path: Path,
    sessions: int,
    batch_sizes: Sequence[int],
    seconds: float,
    on_point: Callable[[BaselinePoint], None] | None = None,
) -> list[BaselinePoint]:
    """Images/s of `sessions` single-threaded sessions running side by side, each on its own batches (latency
    is per session call)."""
    runners = [_session(model_path, 1) for _ in range(sessions)]
    model_input = runners[0].get_inputs()[0]
    sample_shape = [int(d) for d in model_input.shape[1:]]
    rng = np.random.default_rng(0)
    points = []
    for batch_size in batch_sizes:
        feeds = [
            {model_input.name: rng.standard_normal((batch_size, *sample_shape), dtype=np.float32)} for _ in runners
        ]
        for session, feed in zip(runners, feeds, strict=True):
            for _ in range(WARMUP_RUNS):
                session.run(None, feed)
        latencies: list[list[float]] = [[] for _ in runners]
        cpu_before = _own_cpu_seconds()
        machine_before = machine_busy_seconds()
        started = time.perf_counter()
        threads = [
            threading.Thread(target=_run_until, args=(session, feed, started + seconds, own))
            for session, feed, own in zip(runners, feeds, latencies, strict=True)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        elapsed = time.perf_counter() - started
        every = np.asarray([latency for own in latencies for latency in own])
        point = BaselinePoint(
            batch_size=batch_size,
            runs=len(every),
            images_per_second=batch_size * len(every) / elapsed,
            latency=LatencySummary.of(every),
            cpu_cores=(_own_cpu_seconds() - cpu_before) / elapsed,
            machine_cpu_cores=(machine_busy_seconds() - machine_before) / elapsed,
            sessions=sessions,
            threads_per_session=1,
        )
        points.append(point)
        if on_point is not None:
            on_point(point)
    return points


def _run_until(session, feed: dict[str, np.ndarray], stop_at: float, latencies: list[float]) -> None:
    """Run `session` back to back until `stop_at` (and at least MIN_RUNS times), appending each call's seconds."""
    while len(latencies) < MIN_RUNS or time.perf_counter() < stop_at:
        call_started = time.perf_counter()
        session.run(None, feed)
        latencies.append(time.perf_counter() - call_started)


def _session(model_path: Path, intra_op_threads: int):  # -> onnxruntime.InferenceSession
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = intra_op_threads
    options.log_severity_level = 3
    return ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])


def _time_runs(run: Callable[[], object], batch_size: int, seconds: float) -> BaselinePoint:
    latencies: list[float] = []
    cpu_before = _own_cpu_seconds()
    machine_before = machine_busy_seconds()
    started = time.perf_counter()
    while len(latencies) < MIN_RUNS or time.perf_counter() - started < seconds:
        call_started = time.perf_counter()
        run()
        latencies.append(time.perf_counter() - call_started)
    elapsed = time.perf_counter() - started
    cpu = _own_cpu_seconds() - cpu_before
    machine = machine_busy_seconds() - machine_before
    return BaselinePoint(
        batch_size=batch_size,
        runs=len(latencies),
        images_per_second=batch_size * len(latencies) / elapsed,
        latency=LatencySummary.of(np.asarray(latencies)),
        cpu_cores=cpu / elapsed,
        machine_cpu_cores=machine / elapsed,
    )


def best(points: Sequence[BaselinePoint]) -> BaselinePoint | None:
    """The batch size with the highest images/s."""
    return max(points, key=lambda p: p.images_per_second, default=None)
