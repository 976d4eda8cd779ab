"""What `cnnserve bench` measures and for how long: one typed object, validated when built.

Two presets: the default run (two models, 1 to 256 callers, batch sizes 1 to 128; under 10 minutes on a small
machine) and `quick` (one small model, three concurrencies; under a minute, for the test suite). Any field can
be overridden on top of either.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field, field_validator

from load_tests.bench._cpu import cpu_count
from load_tests.bench.models import DEFAULT_CACHE
from load_tests.bench.payloads import PayloadKind

BATCHING_OFF = "batching_off"
BATCHING_ON = "batching_on"


def default_processes() -> int:
    """One load-generator process per logical CPU, two at least (so one slow process does not set the pace)."""
    return min(max(cpu_count(), 2), 8)


class BenchSettings(BaseModel):
    model_config = {"frozen": True}

    models: tuple[str, ...] = ("mnist_net", "catsdogs")
    """Seed models to benchmark; each is served alone."""
    model_repository: Path | None = None
    """Take models from here when they are in it; the others are exported with random weights."""
    cache_dir: Path = DEFAULT_CACHE
    """Where models exported with random weights are kept between runs."""
    output_dir: Path = Path("load_tests/results/bench")
    """results.json, results.md, throughput.png, latency.png and the servers' logs."""
    concurrency: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64, 128, 256)
    """Closed-loop callers per point."""
    batch_sizes: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64, 128)
    """Batch sizes of the bare ONNX Runtime baseline."""
    warmup_seconds: float = Field(1.0, ge=0.0)
    """Per point, before measuring: connections open, the batcher's queue fills, caches warm."""
    duration_seconds: float = Field(5.0, gt=0.0)
    """Per point, measured."""
    baseline_seconds: float = Field(1.0, gt=0.0)
    """Per baseline batch size (at least three runs however long they take)."""
    processes: int = Field(default_factory=default_processes, ge=1, le=64)
    """Load-generator processes."""
    payload: PayloadKind = PayloadKind.FLOAT32
    """How images are sent. float32 tensors compare the serving path with bare ONNX Runtime on equal terms;
    png/jpeg add the server's decoding."""
    images_per_request: int = Field(1, ge=1, le=256)
    intra_op_threads: int = Field(0, ge=0)
    """ONNX Runtime threads, for the baseline and the servers alike; 0 lets ONNX Runtime choose."""
    server_flags: tuple[str, ...] = ()
    """Extra `cnnserve serve` flags for both servers."""
    batching_off_flags: tuple[str, ...] = ("--max-batch-size", "1")
    batching_on_flags: tuple[str, ...] = ()
    """Flags of the batching server on top of the server's defaults."""
    timeout_seconds: float = Field(30.0, gt=0.0)
    """Deadline of every call."""
    bulk_images: int = Field(32, ge=0, le=256)
    """Images per request of the saturation points (ModelInfer, raw in the message and in shared memory);
    0 skips them."""
    bulk_callers: int = Field(4, ge=1)
    """Callers of the saturation points: enough to keep a batch waiting behind each running one."""
    throughput_configuration: bool = True
    """Also saturate a server with one single-threaded instance per core (`--instances N --intra-op-threads 1`),
    and measure bare ONNX Runtime the same way (N sessions of one thread side by side)."""
    plots: bool = True

    @field_validator("concurrency", "batch_sizes")
    @classmethod
    def _positive_sorted(cls, values: tuple[int, ...]) -> tuple[int, ...]:
        if not values:
            raise ValueError("needs at least one value")
        if any(v < 1 for v in values):
            raise ValueError(f"values must be at least 1, got {list(values)}")
        return tuple(sorted(set(values)))

    @field_validator("models")
    @classmethod
    def _some_models(cls, values: tuple[str, ...]) -> tuple[str, ...]:
        if not values:
            raise ValueError("name at least one model")
        return values

    def server_flags_for(self, mode: str) -> list[str]:
        own = self.batching_off_flags if mode == BATCHING_OFF else self.batching_on_flags
        threads = ["--intra-op-threads", str(self.intra_op_threads)] if self.intra_op_threads else []
        return [*threads, *self.server_flags, *own]

    def throughput_flags(self, max_batch_size: int | None) -> list[str]:
        """The throughput configuration's flags: the batching server's, with one single-threaded instance per
        core, so that batches run side by side instead of sharing threads that wait for each other, and batches
        of `max_batch_size`: the runner picks it from bare ONNX Runtime run that way in the same run (tuned from
        the run's own measurements, as Triton's model analyzer would)."""
        batch = ["--max-batch-size", str(max_batch_size)] if max_batch_size else []
        return [
            *self.server_flags,
            *self.batching_on_flags,
            "--instances",
            str(cpu_count()),
            "--intra-op-threads",
            "1",
            *batch,
        ]

    @property
    def measures_throughput_configuration(self) -> bool:
        return self.throughput_configuration and cpu_count() > 1

    def parallel_batch_sizes(self) -> tuple[int, ...]:
        """Batch sizes of the baseline's side-by-side sessions: the sweep's, up to 32 (larger ones were never
        better per image here)."""
        return tuple(size for size in self.batch_sizes if size <= 32) or self.batch_sizes[:1]

    def estimated_seconds(self) -> float:
        """A rough duration of the whole run on a small machine, for the progress display."""
        per_point = self.warmup_seconds + self.duration_seconds + 0.5
        bulk_points = 2 if self.bulk_images else 0
        per_model = (
            len(self.batch_sizes) * (self.baseline_seconds + 0.3)
            + 2 * (3.0 + len(self.concurrency) * per_point)
            + (1 + bulk_points) * per_point
        )
        if self.measures_throughput_configuration:
            per_model += len(self.parallel_batch_sizes()) * (self.baseline_seconds + 0.3)
            per_model += 3.0 + (1 + bulk_points) * per_point
        return len(self.models) * per_model


QUICK: dict[str, Any] = {
    "models": ("mnist_net",),
    "concurrency": (1, 8, 64),
    "batch_sizes": (1, 8, 64),
    "warmup_seconds": 0.3,
    "duration_seconds": 1.5,
    "baseline_seconds": 0.3,
    "bulk_images": 8,
    "throughput_configuration": False,
}
"""The `--quick` preset: proves the whole pipeline works in well under a minute."""


def bench_settings(quick: bool = False, **overrides: Any) -> BenchSettings:
    """The default or quick preset with `overrides` (None values ignored) applied."""
    given = {key: value for key, value in overrides.items() if value is not None}
    return BenchSettings(**{**(QUICK if quick else {}), **given})
