"""The issue's performance targets, checked against what a run measured.

- catsdogs (compute dominates): the server's best images/s at saturation is at least 90% of bare ONNX Runtime's
  best. Both sides are the best measured: bare ONNX Runtime over batch sizes and over one session with every
  core or one single-threaded session per core; the server over the batching sweep and the saturation points
  (request shapes and configurations). The check's text names which point it was and also gives the best
  single-image figure, so nobody has to guess what was compared.
- mnist_net (per-request overhead dominates), single-image requests: batching on serves at least twice the
  requests/s of batching off at 64 callers, and its p99 latency at one caller is within 1 ms of bare ONNX
  Runtime's batch-1 p99 plus the p99 of a gRPC round trip (a health check).

A target whose inputs were not measured (another model set, no 64-caller point) is reported as not measured.
"""

from __future__ import annotations

from load_tests.bench.results import ModelResult, ServerPoint, TargetCheck
from load_tests.bench.settings import BATCHING_OFF, BATCHING_ON

SATURATION_MODEL = "catsdogs"
SATURATION_FRACTION = 0.90
OVERHEAD_MODEL = "mnist_net"
BATCHING_GAIN_CALLERS = 64
BATCHING_GAIN = 2.0
LATENCY_SLACK_MS = 1.0


def check_targets(models: list[ModelResult]) -> list[TargetCheck]:
    checks: list[TargetCheck] = []
    for result in models:
        if result.model == SATURATION_MODEL:
            checks.append(_saturation(result))
        if result.model == OVERHEAD_MODEL and result.images_per_request == 1:
            checks.append(_batching_gain(result))
            checks.append(_one_caller_latency(result))
    return checks


def saturation_ratio(result: ModelResult, mode: str = BATCHING_ON) -> float | None:
    """The server's best images/s over bare ONNX Runtime's best, or None when either is missing."""
    sweep = result.sweep(mode)
    limit = result.onnxruntime_best()
    served = sweep.best() if sweep is not None else None
    if limit is None or served is None or limit.images_per_second <= 0:
        return None
    return served.images_per_second / limit.images_per_second


def server_best(result: ModelResult) -> tuple[ServerPoint, str] | None:
    """The server's highest images/s of the run, from the batching sweep or a saturation point, and what it was."""
    candidates: list[tuple[ServerPoint, str]] = []
    sweep = result.sweep(BATCHING_ON)
    if sweep is not None and (best := sweep.best()) is not None:
        count = result.images_per_request
        shape = f"{count} image{'s' if count > 1 else ''} per Classify call ({result.payload})"
        candidates.append((best, f"{shape}, {best.concurrency} callers, default configuration"))
    candidates += [(point.point, point.description) for point in result.saturation]
    return max(candidates, key=lambda candidate: candidate[0].images_per_second, default=None)


def _saturation(result: ModelResult) -> TargetCheck:
    name = f"server throughput at saturation >= {SATURATION_FRACTION:.0%} of bare ONNX Runtime's best"
    required = f">= {SATURATION_FRACTION:.2f}"
    limit = result.onnxruntime_best()
    found = server_best(result)
    if limit is None or found is None or limit.images_per_second <= 0:
        return TargetCheck(name, result.model, None, "not measured", required)
    best, what = found
    ratio = best.images_per_second / limit.images_per_second
    measured = (
        f"{ratio:.2f} ({best.images_per_second:.1f} images/s: {what}; bare ONNX Runtime "
        f"{limit.images_per_second:.1f} at {limit.label})"
    )
    single = saturation_ratio(result)
    if single is not None and result.images_per_request == 1:
        measured += f"; single-image Classify calls {single:.2f}"
    return TargetCheck(name, result.model, ratio >= SATURATION_FRACTION, measured, required)


def _batching_gain(result: ModelResult) -> TargetCheck:
    callers = BATCHING_GAIN_CALLERS
    name = f"batching on / off requests/s at {callers} callers"
    required = f">= {BATCHING_GAIN:.1f}x"
    on, off = result.sweep(BATCHING_ON), result.sweep(BATCHING_OFF)
    on_point = on.at(callers) if on is not None else None
    off_point = off.at(callers) if off is not None else None
    if on_point is None or off_point is None or off_point.requests_per_second <= 0:
        return TargetCheck(name, result.model, None, "not measured", required)
    gain = on_point.requests_per_second / off_point.requests_per_second
    measured = f"{gain:.2f}x ({on_point.requests_per_second:.0f} vs {off_point.requests_per_second:.0f} requests/s)"
    return TargetCheck(name, result.model, gain >= BATCHING_GAIN, measured, required)


def _one_caller_latency(result: ModelResult) -> TargetCheck:
    name = "p99 latency at 1 caller (batching on) vs bare ONNX Runtime batch-1 p99 + gRPC round-trip p99"
    on = result.sweep(BATCHING_ON)
    point = on.at(1) if on is not None else None
    bare = result.onnxruntime_at(1)
    trip = result.round_trip
    if (
        point is None
        or bare is None
        or trip is None
        or None in (point.latency.p99_ms, bare.latency.p99_ms, trip.p99_ms)
    ):
        return TargetCheck(name, result.model, None, "not measured", f"<= bound + {LATENCY_SLACK_MS:.0f} ms")
    assert point.latency.p99_ms is not None and bare.latency.p99_ms is not None and trip.p99_ms is not None
    bound = bare.latency.p99_ms + trip.p99_ms + LATENCY_SLACK_MS
    measured = f"{point.latency.p99_ms:.2f} ms"
    required = (
        f"<= {bound:.2f} ms ({bare.latency.p99_ms:.2f} ONNX Runtime + {trip.p99_ms:.2f} round trip "
        f"+ {LATENCY_SLACK_MS:.0f})"
    )
    return TargetCheck(name, result.model, point.latency.p99_ms <= bound, measured, required)
