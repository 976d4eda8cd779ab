"""The whole benchmark: for each model, bare ONNX Runtime, then the server with batching off and on.

Order per model: prepare the model; measure bare ONNX Runtime at each batch size (and as one single-threaded
session per core side by side) while no server runs; then start a server with batching off, check one real
request, measure a gRPC round trip, sweep the concurrency, stop it; the same with batching on, which is then
also saturated with many-image requests (ModelInfer, raw in the message and in shared memory); finally the
throughput configuration (one single-threaded instance per core) with single-image and many-image requests.
The load generator's processes are started once for the whole run.
"""

from __future__ import annotations

import logging
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from load_tests.bench._cpu import cpu_count
from load_tests.bench.baseline import BaselineSettings, measure_onnxruntime, measure_parallel_sessions
from load_tests.bench.loadgen import LoadGenerator
from load_tests.bench.measure import (
    CLASSIFY_METHOD,
    HEALTH_CHECK_METHOD,
    INFER_METHOD,
    Window,
    health_check_request,
    measure_point,
)
from load_tests.bench.models import prepare_model, single_model_repository
from load_tests.bench.payloads import ModelInput, PayloadKind, classify_request, synthetic_photo
from load_tests.bench.progress import Progress
from load_tests.bench.results import (
    BaselinePoint,
    BenchResult,
    ModelResult,
    SaturationPoint,
    ServerPoint,
    ServerSweep,
    throughput_batch_size,
)
from load_tests.bench.server import ServerUnderTest, running_server
from load_tests.bench.settings import BATCHING_OFF, BATCHING_ON, BenchSettings
from load_tests.bench.shared_memory import infer_request, registered_region, shared_memory_available
from load_tests.bench.targets import check_targets

_log = logging.getLogger(__name__)
MODES = (BATCHING_OFF, BATCHING_ON)


def run_benchmark(settings: BenchSettings, progress: Progress | None = None, command: str = "") -> BenchResult:
    """Measure every model of `settings` and return the results (files are written by `write_reports`)."""
    progress = progress or Progress(settings.estimated_seconds(), enabled=False)
    started_wall = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    started = time.monotonic()
    machine = machine_description()
    results = []
    with LoadGenerator(settings.processes) as generator, tempfile.TemporaryDirectory(prefix="cnnserve-bench-") as tmp:
        for name in settings.models:
            results.append(_benchmark_model(name, settings, generator, Path(tmp), progress))
    machine["load_average_after"] = _load_average()
    return BenchResult(
        started_at=started_wall,
        elapsed_seconds=time.monotonic() - started,
        command=command,
        machine=machine,
        settings=settings.model_dump(mode="json"),
        models=results,
        targets=check_targets(results),
    )


def _benchmark_model(
    name: str, settings: BenchSettings, generator: LoadGenerator, scratch: Path, progress: Progress
) -> ModelResult:
    prepared = prepare_model(name, settings.cache_dir, settings.model_repository)
    progress.note(f"{name}: {prepared.model_path} ({prepared.weights} weights)")

    def on_baseline(point: BaselinePoint) -> None:
        progress.step(
            settings.baseline_seconds + 0.3,
            f"{name} bare ONNX Runtime, {point.label}: {point.images_per_second:,.0f} images/s, "
            f"p99 {point.latency.p99_ms:.2f} ms per batch",
        )

    baseline = measure_onnxruntime(
        prepared.model_path,
        BaselineSettings(settings.batch_sizes, settings.baseline_seconds, settings.intra_op_threads),
        on_point=on_baseline,
    )
    if settings.measures_throughput_configuration:
        baseline += measure_parallel_sessions(
            prepared.model_path,
            cpu_count(),
            settings.parallel_batch_sizes(),
            settings.baseline_seconds,
            on_point=on_baseline,
        )
    result = ModelResult(
        model=name,
        input_shape=[],
        weights=prepared.weights,
        payload=settings.payload.value,
        images_per_request=settings.images_per_request,
        request_bytes=0,
        onnxruntime=baseline,
    )
    repository = single_model_repository(prepared, scratch)
    window = Window(settings.warmup_seconds, settings.duration_seconds, settings.timeout_seconds)
    per_point = settings.warmup_seconds + settings.duration_seconds + 0.5
    for mode in MODES:
        flags = settings.server_flags_for(mode)
        log_path = settings.output_dir / "logs" / f"{name}-{mode}.log"
        with running_server(repository, flags, log_path) as server:
            sweep, request = _start_sweep(server, name, mode, flags, settings, result)
            progress.step(3.0, f"{name} {mode}: server up ({' '.join(flags) or 'default flags'}), {sweep.batching}")
            if result.round_trip is None:
                trip = measure_point(
                    generator,
                    server,
                    method=HEALTH_CHECK_METHOD,
                    request=health_check_request(),
                    callers=1,
                    window=window,
                    model=None,
                )
                result.round_trip = trip.latency
                progress.step(per_point, f"{name}: gRPC round trip (health check) p99 {trip.latency.p99_ms:.3f} ms")
            for callers in settings.concurrency:
                point = _classify_point(generator, server, name, request, callers, window, settings)
                sweep.points.append(point)
                progress.step(per_point, f"{name} {mode}, {callers} callers: {_summary(point)}")
            if mode == BATCHING_ON:
                result.saturation += _saturate(generator, server, name, "defaults", flags, settings, window, progress)
        result.sweeps.append(sweep)
    if settings.measures_throughput_configuration:
        result.saturation += _throughput_configuration(generator, repository, name, settings, window, result, progress)
    return result


def _throughput_configuration(
    generator: LoadGenerator,
    repository: Path,
    name: str,
    settings: BenchSettings,
    window: Window,
    result: ModelResult,
    progress: Progress,
) -> list[SaturationPoint]:
    """One single-threaded instance per core, batches of the size bare ONNX Runtime liked best that way:
    single-image calls at the batching sweep's best concurrency, then the many-image requests."""
    flags = settings.throughput_flags(throughput_batch_size(result.onnxruntime))
    on = result.sweep(BATCHING_ON)
    best = on.best() if on is not None else None
    callers = best.concurrency if best is not None else max(settings.concurrency)
    per_point = settings.warmup_seconds + settings.duration_seconds + 0.5
    log_path = settings.output_dir / "logs" / f"{name}-throughput.log"
    with running_server(repository, flags, log_path) as server:
        progress.step(3.0, f"{name} throughput configuration: server up ({' '.join(flags)})")
        request = _checked_classify_request(server, name, settings)
        point = _classify_point(generator, server, name, request, callers, window, settings)
        words = _classify_words(settings)
        progress.step(per_point, f"{name} throughput configuration, {words}, {callers} callers: {_summary(point)}")
        points = [SaturationPoint("throughput", flags, words, settings.images_per_request, point)]
        points += _saturate(generator, server, name, "throughput", flags, settings, window, progress)
    return points


def _classify_point(
    generator: LoadGenerator,
    server: ServerUnderTest,
    name: str,
    request: bytes,
    callers: int,
    window: Window,
    settings: BenchSettings,
) -> ServerPoint:
    """`callers` closed-loop Classify callers for one window; raises if the server died meanwhile."""
    point = measure_point(
        generator,
        server,
        method=CLASSIFY_METHOD,
        request=request,
        callers=callers,
        window=window,
        model=name,
        images_per_request=settings.images_per_request,
    )
    _check_server_alive(server)
    return point


def _saturate(
    generator: LoadGenerator,
    server: ServerUnderTest,
    name: str,
    configuration: str,
    flags: list[str],
    settings: BenchSettings,
    window: Window,
    progress: Progress,
) -> list[SaturationPoint]:
    """Keep the server saturated with `bulk_images` images per ModelInfer call: raw in the message, then (where
    /dev/shm exists) in system shared memory, so that no tensor bytes travel."""
    rows = settings.bulk_images
    if not rows:
        return []
    model_input = ModelInput.from_model_info(server.model_info(name))
    batch = np.stack([model_input.to_model_input(synthetic_photo(model_input, seed)) for seed in range(rows)])
    per_point = settings.warmup_seconds + settings.duration_seconds + 0.5
    points = []

    def measure(request_words: str, request: bytes) -> None:
        point = measure_point(
            generator,
            server,
            method=INFER_METHOD,
            request=request,
            callers=settings.bulk_callers,
            window=window,
            model=name,
            images_per_request=rows,
        )
        _check_server_alive(server)
        points.append(SaturationPoint(configuration, flags, request_words, rows, point))
        progress.step(per_point, f"{name} {configuration} configuration, {request_words}: {_summary(point)}")

    measure(f"{rows} images per ModelInfer, raw in the message", _checked_infer_request(server, name, batch))
    if shared_memory_available():
        with registered_region(server.target, f"bench-{name}", batch) as region:
            request = _checked_infer_request(server, name, batch, region)
            measure(f"{rows} images per ModelInfer, in shared memory", request)
    else:
        progress.note(f"{name}: no writable /dev/shm here, so no shared memory point")
    return points


def _checked_infer_request(server: ServerUnderTest, name: str, batch: np.ndarray, region: str | None = None) -> bytes:
    """The serialised ModelInfer request, after one call proved the server answers it with a row per image."""
    request = infer_request(name, batch, region)
    response = server.infer(request)
    if not response.outputs or response.outputs[0].shape[0] != len(batch):
        raise RuntimeError(f"{name}: ModelInfer of {len(batch)} images answered {response.outputs}")
    return request.SerializeToString()


def _classify_words(settings: BenchSettings) -> str:
    count = settings.images_per_request
    return f"{count} image{'s' if count > 1 else ''} per Classify call ({PayloadKind(settings.payload).value})"


def _checked_classify_request(server: ServerUnderTest, name: str, settings: BenchSettings) -> bytes:
    """The serialised Classify request of the sweeps, after one call proved the server answers it properly."""
    model_input = ModelInput.from_model_info(server.model_info(name))
    request = classify_request(name, model_input, settings.payload, settings.images_per_request)
    response = server.classify(request)
    if len(response.results) != settings.images_per_request:
        raise RuntimeError(f"{name}: asked for {settings.images_per_request} results, got {len(response.results)}")
    return request.SerializeToString()


def _start_sweep(
    server: ServerUnderTest, name: str, mode: str, flags: list[str], settings: BenchSettings, result: ModelResult
) -> tuple[ServerSweep, bytes]:
    """Describe the served model, build the request once and check the server answers it properly."""
    info = server.model_info(name)
    model_input = ModelInput.from_model_info(info)
    serialized = _checked_classify_request(server, name, settings)
    result.input_shape = [model_input.channels, model_input.height, model_input.width]
    result.request_bytes = len(serialized)
    batching = {
        "max_batch_size": info.batching.max_batch_size,
        "max_queue_delay_ms": info.batching.max_queue_delay_microseconds / 1000,
        "max_queue_size": info.batching.max_queue_size,
    }
    provider = info.versions[0].execution_provider if info.versions else ""
    return ServerSweep(mode=mode, flags=flags, batching=batching, execution_provider=provider), serialized


def _check_server_alive(server: ServerUnderTest) -> None:
    if server.process.poll() is not None:
        raise RuntimeError(f"the server exited with {server.process.returncode} mid-run:\n{server.log_tail()}")


def _summary(point: ServerPoint) -> str:
    batch = f", avg batch {point.average_batch_size:.1f}" if point.average_batch_size else ""
    errors = f", {sum(point.errors.values())} errors" if point.errors else ""
    p99 = point.latency.p99_ms
    return (
        f"{point.requests_per_second:,.0f} req/s, {point.images_per_second:,.0f} images/s, "
        f"p99 {'-' if p99 is None else f'{p99:.2f}'} ms{batch}; CPU server {point.server_cpu_cores:.2f}, "
        f"generator {point.generator_cpu_cores:.2f}, others {point.other_cpu_cores:.2f}{errors}"
    )


def _load_average() -> str:
    try:
        return " ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        return "?"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _memory_gb() -> float | None:
    try:
        import psutil

        return round(psutil.virtual_memory().total / 2**30, 1)
    except ImportError:
        return None


def machine_description() -> dict[str, Any]:
    import grpc
    import onnxruntime

    return {
        "cpu_model": _cpu_model(),
        "logical_cpus": cpu_count(),
        "memory_gb": _memory_gb(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "onnxruntime": onnxruntime.__version__,
        "grpcio": grpc.__version__,
        "load_average_before": _load_average(),
    }
