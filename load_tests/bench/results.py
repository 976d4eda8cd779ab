"""What a benchmark run measured, as plain dataclasses that become the JSON report."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np


@dataclass(frozen=True)
class LatencySummary:
    """Percentiles of a set of latencies, in milliseconds; None when nothing was measured."""

    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None
    mean_ms: float | None

    @classmethod
    def of(cls, seconds: np.ndarray) -> LatencySummary:
        if len(seconds) == 0:
            return cls(None, None, None, None)
        p50, p95, p99 = np.percentile(seconds, [50, 95, 99]) * 1000
        return cls(float(p50), float(p95), float(p99), float(np.mean(seconds) * 1000))


@dataclass(frozen=True)
class BaselinePoint:
    """Bare ONNX Runtime at one batch size; latency is per session.run of the whole batch."""

    batch_size: int
    runs: int
    images_per_second: float
    latency: LatencySummary
    cpu_cores: float
    """CPU seconds per second used by the measuring process (ONNX Runtime's threads)."""
    machine_cpu_cores: float
    """Every process on the machine meanwhile; what exceeds `cpu_cores` was someone else's."""
    sessions: int = 1
    """Sessions running side by side, each on its own batches (images/s is their sum)."""
    threads_per_session: int = 0
    """Intra-op threads of each session; 0: ONNX Runtime's choice (one per core)."""

    @property
    def label(self) -> str:
        if self.sessions == 1:
            return f"batch {self.batch_size}"
        return f"batch {self.batch_size}, {self.sessions} sessions x {self.threads_per_session} thread"


@dataclass(frozen=True)
class ServerPoint:
    """The server at one concurrency: closed-loop callers, each sending its next request when answered."""

    concurrency: int
    requests: int
    """Successful calls that finished inside the measurement window."""
    requests_per_second: float
    images_per_second: float
    latency: LatencySummary
    average_batch_size: float | None
    """Images per executed batch during the window, from the server's own statistics (GetModel)."""
    errors: dict[str, int]
    """Failed calls by gRPC status."""
    server_cpu_cores: float
    generator_cpu_cores: float
    machine_cpu_cores: float
    """Every process on the machine, the server and the generator included."""

    @property
    def other_cpu_cores(self) -> float:
        """CPU used by neither the server nor the generator: other work on a shared machine."""
        return max(self.machine_cpu_cores - self.server_cpu_cores - self.generator_cpu_cores, 0.0)


@dataclass
class ServerSweep:
    """One server configuration over the concurrency sweep."""

    mode: str
    """batching_off or batching_on."""
    flags: list[str]
    batching: dict[str, Any]
    """The batching settings the server reported for the model."""
    execution_provider: str
    points: list[ServerPoint] = field(default_factory=list)

    def at(self, concurrency: int) -> ServerPoint | None:
        return next((p for p in self.points if p.concurrency == concurrency), None)

    def best(self) -> ServerPoint | None:
        return max(self.points, key=lambda p: p.images_per_second, default=None)


@dataclass(frozen=True)
class SaturationPoint:
    """The server kept saturated with one request shape, in one server configuration."""

    configuration: str
    """"defaults" (the batching server's flags) or "throughput" (one single-threaded instance per core)."""
    flags: list[str]
    request: str
    """What each call carried, in words (e.g. "32 images per ModelInfer, in shared memory")."""
    images_per_request: int
    point: ServerPoint

    @property
    def description(self) -> str:
        return f"{self.request}, {self.point.concurrency} callers, {self.configuration} configuration"


@dataclass
class ModelResult:
    model: str
    input_shape: list[int]
    weights: str
    """"random" (exported untrained for the benchmark) or "as found" (taken from --model-repository)."""
    payload: str
    images_per_request: int
    request_bytes: int
    round_trip: LatencySummary | None = None
    """A grpc.health.v1 Check at one caller: the cost of a gRPC call with no work behind it."""
    onnxruntime: list[BaselinePoint] = field(default_factory=list)
    sweeps: list[ServerSweep] = field(default_factory=list)
    saturation: list[SaturationPoint] = field(default_factory=list)
    """Saturation with other request shapes and configurations than the sweeps' single-image Classify calls."""

    def sweep(self, mode: str) -> ServerSweep | None:
        return next((s for s in self.sweeps if s.mode == mode), None)

    def onnxruntime_at(self, batch_size: int) -> BaselinePoint | None:
        """The one-session point at `batch_size` (the sweep of batch sizes)."""
        return next((p for p in self.onnxruntime if p.batch_size == batch_size and p.sessions == 1), None)

    def onnxruntime_best(self) -> BaselinePoint | None:
        return max(self.onnxruntime, key=lambda p: p.images_per_second, default=None)


@dataclass(frozen=True)
class TargetCheck:
    """One of the issue's targets, as measured; passed is None when the run did not measure what it needs."""

    name: str
    model: str
    passed: bool | None
    measured: str
    required: str


@dataclass
class BenchResult:
    started_at: str
    elapsed_seconds: float
    command: str
    machine: dict[str, Any]
    settings: dict[str, Any]
    models: list[ModelResult]
    targets: list[TargetCheck]

    def to_json_dict(self) -> dict[str, Any]:
        return _finite(asdict(self))


def _finite(value: Any) -> Any:
    """NaN and infinities become None: JSON has no spelling for them."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(item) for item in value]
    return value


def throughput_batch_size(baseline: list[BaselinePoint]) -> int | None:
    """The largest batch size at which bare ONNX Runtime's side-by-side sessions came within 2% of their best
    (differences that small are noise between runs). Where bare runs are flat across batch sizes, a larger batch
    costs inference nothing per image and spreads the server's own work per batch over more images: the smallest
    such size once picked 1 for catsdogs, whose single-image point then could not batch at all (298 against the
    defaults' 365 images/s). None without side-by-side points."""
    side_by_side = [point for point in baseline if point.sessions > 1]
    if not side_by_side:
        return None
    best = max(point.images_per_second for point in side_by_side)
    return max(point.batch_size for point in side_by_side if point.images_per_second >= 0.98 * best)
