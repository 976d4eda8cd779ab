"""The issue's performance targets, checked against what a run measured.

- catsdogs (compute dominates): the server's best images/s is at least 90% of bare ONNX Runtime's best.
- mnist_net (per-request overhead dominates), single-image requests: batching on serves at least twice the
  requests/s of batching off at 64 callers, and its p99 latency at one caller is within 1 ms of bare ONNX
  Runtime's batch-1 p99 plus the p99 of a gRPC round trip (a health check).

A target whose inputs were not measured (another model set, no 64-caller point) is reported as not measured.
"""

from __future__ import annotations

from cnnserve.bench.results import ModelResult, TargetCheck
from cnnserve.bench.settings import BATCHING_OFF, BATCHING_ON

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


def _saturation(result: ModelResult) -> TargetCheck:
    name = f"server throughput at saturation >= {SATURATION_FRACTION:.0%} of bare ONNX Runtime's best"
    ratio = saturation_ratio(result)
    required = f">= {SATURATION_FRACTION:.2f}"
    if ratio is None:
        return TargetCheck(name, result.model, None, "not measured", required)
    limit = result.onnxruntime_best()
    sweep = result.sweep(BATCHING_ON)
    assert limit is not None and sweep is not None
    best = sweep.best()
    assert best is not None
    measured = (
        f"{ratio:.2f} ({best.images_per_second:.1f} images/s at {best.concurrency} callers vs "
        f"{limit.images_per_second:.1f} at batch {limit.batch_size})"
    )
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
