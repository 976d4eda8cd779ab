"""Per-model-version statistics, with the meaning Triton's statistics extension gives each field.

These answer GetModel and the Open Inference Protocol's ModelStatistics; Prometheus gets its own histograms
(server/metrics.py). Triton's tools read them as Triton writes them: perf_analyzer takes two snapshots and
requires success, queue, compute_input, compute_infer and compute_output to have moved by the same count
between them. So, as in Triton, a request's figures are gathered along its path (`RequestStatistics`) and
counted all at once when it succeeds (`record_success`), never stage by stage: a snapshot taken while requests
are in flight sees each of them in every figure or in none. Executions are counted by the batch
(`record_execution`). Everything here is updated from the event loop thread only, so plain integers suffice.
"""

from __future__ import annotations

import time
from contextvars import ContextVar
from dataclasses import dataclass, field


@dataclass
class DurationStatistic:
    """How many times something happened and how long it took in total."""

    count: int = 0
    total_ns: int = 0

    def add(self, seconds: float, count: int = 1) -> None:
        """Count `count` occurrences that took `seconds` in all."""
        self.count += count
        self.total_ns += int(seconds * 1e9)


@dataclass(slots=True)
class RequestStatistics:
    """What one request adds to its model's statistics once it succeeds: its durations in seconds, and the
    images it had inferred.

    A request cut into slices (more rows than a batch holds) still counts once; its durations are the sums over
    its slices. The compute durations of a batched request are its batch's, as in Triton.
    """

    compute_input: float = 0.0
    """Turning the request's payload into model input (decoding, checking), plus assembling its batch."""
    queue: float = 0.0
    """From joining the batcher's queue to the start of its batch."""
    compute_infer: float = 0.0
    """Running its batch's session call."""
    compute_output: float = 0.0
    """Turning its rows of model output into probabilities."""
    inferences: int = 0


_current_request: ContextVar[RequestStatistics | None] = ContextVar("cnnserve_current_request", default=None)


def start_request_statistics() -> RequestStatistics:
    """Start collecting for the request that the current task serves, and return the collector to record.

    Code on the request's path adds to it through `current_request()`. It lives in the task's context: each gRPC
    call runs in a task of its own, so it ends with the call, and the tasks a request starts copy the context,
    so the slices of a request that the batcher submits concurrently add to the same collector.
    """
    request = RequestStatistics()
    _current_request.set(request)
    return request


def current_request() -> RequestStatistics:
    """The collector of the request this code runs for; outside one (a batcher used on its own, in tests), a
    throwaway that nothing records."""
    return _current_request.get() or RequestStatistics()


@dataclass
class BatchSizeStatistics:
    """Per executed batch size: one count per execution in each part, with that batch's durations."""

    compute_input: DurationStatistic = field(default_factory=DurationStatistic)
    compute_infer: DurationStatistic = field(default_factory=DurationStatistic)
    compute_output: DurationStatistic = field(default_factory=DurationStatistic)


@dataclass
class ModelStatistics:
    """Since the version was loaded.

    `success`, `queue` and `compute_*` count successful requests, one each, with their durations summed
    (`success`: the whole request); `fail` counts failed requests. `inference_count` counts the images of
    successful requests and `execution_count` the successful batch executions, so their ratio is the average
    batch size; `batches` holds the executions by batch size.
    """

    success: DurationStatistic = field(default_factory=DurationStatistic)
    fail: DurationStatistic = field(default_factory=DurationStatistic)
    queue: DurationStatistic = field(default_factory=DurationStatistic)
    compute_input: DurationStatistic = field(default_factory=DurationStatistic)
    compute_infer: DurationStatistic = field(default_factory=DurationStatistic)
    compute_output: DurationStatistic = field(default_factory=DurationStatistic)
    inference_count: int = 0
    execution_count: int = 0
    last_inference_ms: int = 0
    batches: dict[int, BatchSizeStatistics] = field(default_factory=dict)

    def record_success(self, seconds: float, request: RequestStatistics, count: int = 1) -> None:
        """Count a request that succeeded after `seconds`, in every per-request figure at once; or `count`
        requests, with `seconds` and `request` their sums."""
        self.success.add(seconds, count)
        self.queue.add(request.queue, count)
        self.compute_input.add(request.compute_input, count)
        self.compute_infer.add(request.compute_infer, count)
        self.compute_output.add(request.compute_output, count)
        self.inference_count += request.inferences
        self.last_inference_ms = int(time.time() * 1000)

    def record_failure(self, seconds: float, count: int = 1) -> None:
        self.fail.add(seconds, count)

    def record_execution(self, size: int, input_seconds: float, infer_seconds: float, output_seconds: float) -> None:
        """Count one successful session call on a batch of `size` images and the durations of its parts."""
        self.execution_count += 1
        self.last_inference_ms = int(time.time() * 1000)
        batch = self.batches.setdefault(size, BatchSizeStatistics())
        batch.compute_input.add(input_seconds)
        batch.compute_infer.add(infer_seconds)
        batch.compute_output.add(output_seconds)

    @property
    def batch_size_counts(self) -> dict[int, int]:
        """How many batches ran at each size."""
        return {size: stats.compute_infer.count for size, stats in self.batches.items()}
