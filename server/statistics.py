"""Per-model-version counters and cumulative durations, shaped like Triton's model statistics.

These answer GetModel and the Open Inference Protocol's ModelStatistics; Prometheus gets its own histograms
(server/metrics.py). Everything here is updated from the event loop thread only, so plain integers suffice.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field


@dataclass
class DurationStatistic:
    """How many times something happened and how long it took in total."""

    count: int = 0
    total_ns: int = 0

    def add(self, seconds: float, count: int = 1) -> None:
        self.count += count
        self.total_ns += int(seconds * 1e9)


@dataclass
class BatchSizeStatistics:
    """Per executed batch size: how often it ran and how long its parts took."""

    compute_input: DurationStatistic = field(default_factory=DurationStatistic)
    compute_infer: DurationStatistic = field(default_factory=DurationStatistic)
    compute_output: DurationStatistic = field(default_factory=DurationStatistic)


@dataclass
class ModelStatistics:
    """Since the version was loaded.

    Request-level figures (success, fail, queue, compute_*) are per request, as Triton counts them;
    `inference_count` counts images and `execution_count` batches, so their ratio is the average batch size.
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

    def record_batch(self, size: int, compute_seconds: float) -> None:
        self.inference_count += size
        self.execution_count += 1
        self.last_inference_ms = int(time.time() * 1000)
        self.batches.setdefault(size, BatchSizeStatistics()).compute_infer.add(compute_seconds)

    @property
    def batch_size_counts(self) -> dict[int, int]:
        return {size: stats.compute_infer.count for size, stats in self.batches.items()}
