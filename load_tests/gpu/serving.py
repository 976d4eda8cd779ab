"""The server on the GPU: `cnnserve serve` in several configurations, each under closed-loop load.

Configurations are data (a name and the flags it adds), so the check runs whatever this server supports: a
configuration whose flags `cnnserve serve --help` does not list is skipped and says so, and CUDA graphs are left
out on the CPU. Every server runs on loopback port 0 (`load_tests.bench.server.running_server`), serves only
the measured models, and must report in GetModel the provider the check asked for; otherwise the configuration
failed. Each model gets two request shapes: single-image Classify calls (float32 tensors, so no decoding) from
many callers, and batched ModelInfer calls; the load generator and the point measurement are the benchmark's.
"""

from __future__ import annotations

import dataclasses
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from google.protobuf.json_format import MessageToDict

from cnnserve.server.launcher import ServerStartError
from cnnserve.server.session_runner import SHAPE_CHANGE_WARNING
from load_tests.bench.loadgen import LoadGenerator
from load_tests.bench.measure import CLASSIFY_METHOD, Window, measure_point
from load_tests.bench.payloads import ModelInput, PayloadKind, classify_request, synthetic_photo
from load_tests.bench.server import ServerUnderTest, running_server
from load_tests.bench.shape_changes import powers_of_two_through
from load_tests.bench.shared_memory import infer_request
from load_tests.gpu.budget import Budget
from load_tests.gpu.cli import CUDA as CUDA_CHOICE
from load_tests.gpu.correctness import expected_provider
from load_tests.gpu.results import ServerMeasurement, ServerRun, Skipped
from load_tests.gpu.system import GpuSampler

POINT_OVERHEAD_SECONDS = 0.8
"""Per point, beyond warm-up and window: the generator's start delay, draining the queue, reading counters."""
GIL_SWITCH_MS = 0.5
"""The GIL switch interval the gil_switch configurations try, against Python's 5 ms."""
OLD_CUDA_BUCKETS = tuple(str(size) for size in powers_of_two_through(128))
"""1, 2, 4, ... 128: what CUDA's buckets were by default before they became one shape, measured beside it."""
CONNECTIONS_PER_FRONTEND = 4
"""The kernel hands each connection to one of the front-ends sharing the port, by a hash: with one connection per
front-end, some get two or three and others none (the first GPU run measured 8 front-ends through 8 connections
barely faster than 4); four per front-end leave none idle in practice."""


@dataclass(frozen=True)
class ServerConfiguration:
    name: str
    flags: tuple[str, ...]
    cuda_only: bool = False
    expected_run: tuple[tuple[str, object], ...] = ()
    """Fields of GetModel's RunInfo the flags must have produced, e.g. (("cuda_graphs", True),): a setting that
    did not take effect fails the configuration rather than measuring something else under its name."""
    connections: int = 1
    """The fewest HTTP/2 connections the load generator opens: each lands in one process of a server whose
    front-ends share the port, so a server of N front-ends gets CONNECTIONS_PER_FRONTEND * N."""


@dataclass(frozen=True)
class RequestShape:
    method: str
    images: int
    callers: int

    @property
    def words(self) -> str:
        call = "Classify" if self.method == CLASSIFY_METHOD else "ModelInfer"
        return f"{self.images} image{'s' if self.images > 1 else ''} per {call}, {self.callers} callers"


@dataclass(frozen=True)
class ServingPlan:
    """What the serving phase measures, sized for the provider (see run.py)."""

    base_flags: tuple[str, ...]
    configurations: tuple[ServerConfiguration, ...]
    shapes: tuple[RequestShape, ...]
    window: Window
    expected_startup_seconds: float
    generator_processes: int

    def only(self, names: tuple[str, ...]) -> ServingPlan:
        """This plan with only the configurations named; ValueError naming the known ones when one is unknown."""
        known = [configuration.name for configuration in self.configurations]
        unknown = [name for name in names if name not in known]
        if unknown:
            raise ValueError(f"no server configuration {', '.join(unknown)}; there are {', '.join(known)}")
        kept = tuple(configuration for configuration in self.configurations if configuration.name in names)
        return dataclasses.replace(self, configurations=kept)

    def point_seconds(self) -> float:
        return self.window.warmup_seconds + self.window.duration_seconds + POINT_OVERHEAD_SECONDS


def configurations(frontends: tuple[int, ...]) -> tuple[ServerConfiguration, ...]:
    """The default server as one process, then one change at a time: no IO binding, fp16, CUDA graphs, batch
    buckets of every power of two (the shape changing with the batch size, CUDA's default before one shape), several
    front-ends; then a GIL switch interval of GIL_SWITCH_MS (a candidate for what bounds the batches a second on a
    GPU host, see docs/gpu.md) in the single process and in the most front-ends. The single-process ones say
    `--frontends 0`: on a GPU host the default (auto) starts front-ends, as many as half the cores, which the
    frontends_N configuration of that count measures."""
    gil = ("--gil-switch-interval-ms", str(GIL_SWITCH_MS))
    single = ("--frontends", "0")
    most = max(frontends)
    return (
        ServerConfiguration("default", single, expected_run=(("io_binding", True), ("precision", "fp32"))),
        ServerConfiguration("no_io_binding", (*single, "--no-io-binding"), expected_run=(("io_binding", False),)),
        ServerConfiguration("fp16", (*single, "--precision", "fp16"), expected_run=(("precision", "fp16"),)),
        ServerConfiguration(
            "cuda_graphs",
            (*single, "--cuda-graphs", "--instances", "1"),
            cuda_only=True,
            expected_run=(("cuda_graphs", True),),
        ),
        ServerConfiguration("buckets", (*single, "--batch-buckets", *OLD_CUDA_BUCKETS)),
        *(
            ServerConfiguration(
                f"frontends_{count}", ("--frontends", str(count)), connections=CONNECTIONS_PER_FRONTEND * count
            )
            for count in frontends
        ),
        ServerConfiguration("gil_switch", (*single, *gil)),
        ServerConfiguration(
            f"frontends_{most}_gil_switch",
            ("--frontends", str(most), *gil),
            connections=CONNECTIONS_PER_FRONTEND * most,
        ),
    )


def server_flags_supported() -> set[str]:
    """Every `--flag` that this interpreter's `cnnserve serve --help` lists."""
    completed = subprocess.run(
        [sys.executable, "-m", "cnnserve", "serve", "--help"], capture_output=True, text=True, timeout=60, check=True
    )
    return set(re.findall(r"--[a-z0-9][a-z0-9-]*", completed.stdout))


def scratch_repository(models: list[Path], root: Path) -> Path:
    """A repository under `root` holding links to exactly `models` (model folders), so a server loads no other."""
    repository = root / "repository"
    repository.mkdir(parents=True, exist_ok=True)
    for model in models:
        link = repository / model.name
        if not link.exists():
            link.symlink_to(model.resolve(), target_is_directory=True)
    return repository


class ServingPhase:
    """Start each configuration's server in turn and measure every model and request shape against it."""

    def __init__(
        self, plan: ServingPlan, provider: str, device_id: int, budget: Budget, logs: Path, supported: set[str]
    ) -> None:
        self.plan = plan
        self.provider = provider
        self.budget = budget
        self.logs = logs
        self.supported = supported
        self.sampler_device = device_id
        self.runs: list[ServerRun] = []
        self.points: list[ServerMeasurement] = []
        self.skipped: list[Skipped] = []

    def measure(self, repository: Path, models: list[str]) -> None:
        with LoadGenerator(self.plan.generator_processes) as generator:
            for configuration in self.plan.configurations:
                self._configuration(configuration, repository, models, generator)

    def _configuration(
        self, configuration: ServerConfiguration, repository: Path, models: list[str], generator: LoadGenerator
    ) -> None:
        flags = [*self.plan.base_flags, *configuration.flags]
        run = ServerRun(configuration.name, flags, status="skipped")
        missing = [flag for flag in configuration.flags if flag.startswith("--") and flag not in self.supported]
        needed = self.plan.expected_startup_seconds + len(models) * len(self.plan.shapes) * self.plan.point_seconds()
        if configuration.cuda_only and self.provider != CUDA_CHOICE:
            run.reason = "needs the CUDA provider"
        elif missing:
            run.reason = f"this cnnserve serve has no {', '.join(missing)}"
        elif not self.budget.allows(needed):
            run.reason = f"out of time (needs ~{needed:.0f} s, {self.budget.left():.0f} s left)"
        else:
            run.status = "measured"
        self.runs.append(run)
        if run.status == "skipped":
            self.budget.say(f"server {configuration.name}: skipped, {run.reason}")
            return
        log_path = self.logs / f"server-{configuration.name}.log"
        run.log = f"{self.logs.name}/{log_path.name}"
        started = time.monotonic()
        try:
            with running_server(repository, flags, log_path) as server:
                run.ready_seconds = time.monotonic() - started
                self._describe(server, run, models, dict(configuration.expected_run))
                self.budget.say(f"server {configuration.name} ready in {run.ready_seconds:.1f} s: {' '.join(flags)}")
                if run.status == "measured":
                    for model in models:
                        self._model(server, configuration, model, generator)
        except (ServerStartError, RuntimeError, OSError) as exc:
            run.status, run.reason = "failed", f"{type(exc).__name__}: {exc}"[-3000:]
            self.budget.say(f"server {configuration.name}: failed: {str(exc).splitlines()[0]}")

    def _describe(
        self, server: ServerUnderTest, run: ServerRun, models: list[str], expected: dict[str, object]
    ) -> None:
        """What the server says each model runs on and how, and its readiness log lines; a provider other than
        the one asked for, or a run plan without the configuration's settings, fails the run."""
        for model in models:
            info = server.model_info(model)
            version = info.versions[0] if info.versions else None
            run.execution_providers[model] = version.execution_provider if version else ""
            if version is not None and hasattr(version, "run"):
                run.run_plans[model] = MessageToDict(
                    version.run, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
                )
        run.ready_lines = [
            line.strip()
            for line in server.server.log().splitlines()
            if " ready on " in line or SHAPE_CHANGE_WARNING in line
        ]
        wrong = {m: p for m, p in run.execution_providers.items() if p != expected_provider(self.provider)}
        if wrong:
            run.status = "failed"
            run.reason = f"GetModel reports {wrong}, expected {expected_provider(self.provider)}"
            return
        for model, plan in run.run_plans.items():
            differing = {key: plan.get(key) for key, value in expected.items() if plan.get(key) != value}
            if differing:
                run.status = "failed"
                run.reason = f"GetModel says {model} runs with {differing}, expected {expected}"

    def _model(
        self, server: ServerUnderTest, configuration: ServerConfiguration, model: str, generator: LoadGenerator
    ) -> None:
        model_input = ModelInput.from_model_info(server.model_info(model))
        for shape in self.plan.shapes:
            what = f"{configuration.name} {model}, {shape.words}"
            if not self.budget.allows(self.plan.point_seconds()):
                self.skipped.append(Skipped(what, "out of time"))
                continue
            request = _checked_request(server, model, model_input, shape)
            sampler = GpuSampler(self.sampler_device, self.provider == CUDA_CHOICE)
            with sampler.sampling():
                point = measure_point(
                    generator,
                    server,
                    method=shape.method,
                    request=request,
                    callers=shape.callers,
                    window=self.plan.window,
                    model=model,
                    images_per_request=shape.images,
                    connections=configuration.connections,
                )
            if server.process.poll() is not None:
                raise RuntimeError(f"the server exited with {server.process.returncode}:\n{server.log_tail()}")
            measurement = ServerMeasurement(configuration.name, model, shape.words, shape.images, point, sampler.result)
            self.points.append(measurement)
            batch = f", avg batch {point.average_batch_size:.1f}" if point.average_batch_size else ""
            gpu = f", GPU {sampler.result.mean_utilization:.0f}%" if sampler.result else ""
            errors = f", {sum(point.errors.values())} errors" if point.errors else ""
            self.budget.say(
                f"{what}: {point.requests_per_second:,.0f} req/s, {point.images_per_second:,.0f} images/s, "
                f"p99 {point.latency.p99_ms or 0:.2f} ms{batch}{gpu}{errors}"
            )


def _checked_request(server: ServerUnderTest, model: str, model_input: ModelInput, shape: RequestShape) -> bytes:
    """The serialised request of `shape`, after one call proved the server answers it with a row per image."""
    if shape.method == CLASSIFY_METHOD:
        request = classify_request(model, model_input, PayloadKind.FLOAT32, shape.images)
        answered = len(server.classify(request).results)
    else:
        pictures = [model_input.to_model_input(synthetic_photo(model_input, seed)) for seed in range(shape.images)]
        request = infer_request(model, np.stack(pictures))
        outputs = server.infer(request).outputs
        answered = outputs[0].shape[0] if outputs else 0
    if answered != shape.images:
        raise RuntimeError(f"{model}: a call of {shape.images} images was answered with {answered} rows")
    return request.SerializeToString()
