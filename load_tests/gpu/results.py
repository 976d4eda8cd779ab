"""What the GPU check found, as plain dataclasses that become gpu_check.json."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from load_tests.bench.results import LatencySummary, ServerPoint
from load_tests.bench.shape_changes import ShapeCost
from load_tests.gpu.system import GpuSample

FP32_TOLERANCE = 1e-4
"""Largest absolute difference allowed between the CPU's and the GPU's fp32 output."""
FP16_MIN_AGREEMENT = 0.98
"""Share of images on which fp16's top-1 label must equal fp32's: the server's own default refusal bound
(fp16_max_disagreement 0.02)."""


@dataclass
class Correctness:
    """One model: the provider under test against the CPU on the same images, in fp32 and in fp16."""

    model: str
    provider: str = ""
    """The provider the session under test really runs on (session.get_providers()[0])."""
    images: int = 0
    max_abs_diff: float | None = None
    fp16_agreement: float | None = None
    """Share of images whose fp16 top-1 label equals the CPU fp32 one."""
    fp16_error: str = ""
    no_tf32_max_abs_diff: float | None = None
    """When fp32 missed the tolerance on CUDA: the difference again with TF32 off (use_tf32=0), to tell
    TF32's rounding from a real fault."""
    error: str = ""

    @property
    def fp32_passed(self) -> bool:
        return not self.error and self.max_abs_diff is not None and self.max_abs_diff <= FP32_TOLERANCE

    @property
    def fp16_passed(self) -> bool:
        return not self.fp16_error and self.fp16_agreement is not None and self.fp16_agreement >= FP16_MIN_AGREEMENT

    @property
    def passed(self) -> bool:
        return self.fp32_passed and self.fp16_passed

    @property
    def problem(self) -> str:
        """Why the model failed; empty when it passed."""
        if self.error:
            return self.error
        problems = []
        if not self.fp32_passed:
            problems.append(f"fp32 differs from the CPU by {self.max_abs_diff:.3g} (> {FP32_TOLERANCE:g})")
            if self.no_tf32_max_abs_diff is not None:
                problems[-1] += f", by {self.no_tf32_max_abs_diff:.3g} with TF32 off"
        if not self.fp16_passed:
            agreement = "-" if self.fp16_agreement is None else f"{self.fp16_agreement:.1%}"
            problems.append(self.fp16_error or f"fp16 top-1 agreement {agreement} < {FP16_MIN_AGREEMENT:.0%}")
        return "; ".join(problems)


@dataclass(frozen=True)
class BarePoint:
    """Bare ONNX Runtime at one batch size: back-to-back runs of one session, nothing else running."""

    model: str
    variant: str
    batch_size: int
    runs: int
    images_per_second: float
    latency: LatencySummary
    """Per run of the whole batch."""


@dataclass(frozen=True)
class Skipped:
    """Something the check did not do, and why (no CUDA, an older server, out of time, or an error)."""

    what: str
    reason: str


@dataclass
class ServerMeasurement:
    """One server configuration, one model, one request shape: a closed-loop point."""

    configuration: str
    model: str
    request: str
    images_per_request: int
    point: ServerPoint
    gpu: GpuSample | None = None


@dataclass
class ServerRun:
    """One server configuration as started: its flags, how long it took to be ready, what it said."""

    configuration: str
    flags: list[str]
    status: str
    """measured, skipped or failed."""
    reason: str = ""
    ready_seconds: float | None = None
    execution_providers: dict[str, str] = field(default_factory=dict)
    """Model -> the provider GetModel reports for its newest version."""
    run_plans: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Model -> how GetModel says its batches really run (IO binding, buckets, CUDA graphs, precision)."""
    ready_lines: list[str] = field(default_factory=list)
    """The server log's "model ... ready on ..." lines, and its warnings of costly changes of batch shape."""
    log: str = ""
    """The server's log, relative to the report's folder."""


@dataclass(frozen=True)
class Target:
    name: str
    value: float | None
    threshold: float
    passed: bool | None
    """None: not evaluated (what it compares was not measured)."""
    detail: str


@dataclass
class LoadingStart:
    """One start of a server over every model: how many versions came up as asked, and what went wrong."""

    configuration: str
    start: int
    flags: list[str]
    versions: int = 0
    ready: int = 0
    seconds: float = 0.0
    problems: list[str] = field(default_factory=list)
    """One line per version that failed or runs without what was asked, or the server's own failure."""
    log: str = ""


@dataclass
class CheckResult:
    started_at: str
    provider: str
    command: str
    budget_seconds: float
    elapsed_seconds: float = 0.0
    machine: dict[str, Any] = field(default_factory=dict)
    cuda_libraries: list[str] = field(default_factory=list)
    """The CUDA and cuDNN libraries the measuring process had mapped after preloading, with their paths."""
    preload_messages: str = ""
    correctness: list[Correctness] = field(default_factory=list)
    bare: list[BarePoint] = field(default_factory=list)
    loading: list[LoadingStart] = field(default_factory=list)
    """Servers started over every model with the settings whose loads can break each other (`loading` phase)."""
    shape_costs: list[ShapeCost] = field(default_factory=list)
    """The same batches at one shape and at changing shapes, per model and cuDNN search (`shapes` phase)."""
    servers: list[ServerRun] = field(default_factory=list)
    server_points: list[ServerMeasurement] = field(default_factory=list)
    frontend_sweep: dict[str, Any] | None = None
    """load_tests.bench.h2load_compare's figures (Sweep.to_dict) for the front-end sweep, when it ran."""
    frontend_sweep_table: str = ""
    """Its Markdown table."""
    targets: list[Target] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    """Steps that raised unexpectedly; each fails the check."""

    @property
    def failures(self) -> list[str]:
        """Why the check fails: correctness misses, starts that lost a version, servers that failed, unexpected
        errors."""
        found = [f"correctness of {c.model}: {c.problem}" for c in self.correctness if not c.passed]
        found += [f"server {run.configuration}: {run.reason}" for run in self.servers if run.status == "failed"]
        found += [
            f"loading {start.configuration}, start {start.start}: {'; '.join(start.problems)}"
            for start in self.loading
            if start.problems
        ]
        return found + self.errors
