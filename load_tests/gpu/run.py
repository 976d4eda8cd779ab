"""The measuring stage of the GPU check: correctness, every model loaded at once, bare ONNX Runtime, changes of
batch shape, the server, the front-end sweep, then the report (`--phases` picks some).

Runs in the interpreter the first stage chose, with the CUDA libraries on LD_LIBRARY_PATH. The phases run in
order of importance (a run short of time still says whether the GPU computes the right answers), each step
checks the budget first, and the report is written whatever happened, from what was measured by then.

`MeasurePlan.for_provider` sizes everything: on CUDA, both benchmark models, six ways of running bare ONNX
Runtime at batch sizes 1 to 256 and every server configuration, in about four minutes; on the CPU (the dry run
the test suite makes), mnist_net only, with windows of a fraction of a second. The front-end sweep under h2load
(load_tests/gpu/frontends.py) adds about two minutes on a 16-core host.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from cnnserve.server.settings import ConvAlgoSearch
from load_tests.bench._cpu import cpu_count
from load_tests.bench.h2load_compare import MODEL as SWEEP_MODEL
from load_tests.bench.measure import CLASSIFY_METHOD, INFER_METHOD, Window
from load_tests.bench.shape_changes import measure as measure_shapes
from load_tests.gpu.bare import VARIANTS, measure_variant, unavailable_reason
from load_tests.gpu.budget import Budget
from load_tests.gpu.cli import CUDA, CheckOptions
from load_tests.gpu.correctness import check_model, repository_models, runtime_settings
from load_tests.gpu.frontends import SweepPlan, measure_frontends
from load_tests.gpu.loading import check_loading
from load_tests.gpu.report import SHAPE_MAX_BATCH, write_reports
from load_tests.gpu.results import BarePoint, CheckResult, Skipped
from load_tests.gpu.serving import (
    RequestShape,
    ServingPhase,
    ServingPlan,
    configurations,
    scratch_repository,
    server_flags_supported,
)
from load_tests.gpu.system import machine_description, mapped_cuda_libraries, preload_cuda_libraries
from load_tests.gpu.targets import evaluate

BATCH_SIZES = tuple(2**power for power in range(9))
"""1 to 256."""
CORRECTNESS_SECONDS = {CUDA: 6.0, "cpu": 2.0}
"""Expected per model: three sessions (CPU, fp32, fp16) and 64 images through each."""


@dataclass(frozen=True)
class MeasurePlan:
    bench_models: tuple[str, ...]
    batch_sizes: tuple[int, ...]
    bare_seconds: float
    """Timed seconds per batch size of each bare variant."""
    shape_batches: int
    """Batches run each way per model and cuDNN search in the shapes phase."""
    shape_seconds: float
    """Expected seconds for one model and search of the shapes phase (a changing shape costs tens of ms on
    CUDA)."""
    serving: ServingPlan
    sweep: SweepPlan
    loading_starts: int = 3
    """Starts of a server over every model per configuration of the loading phase."""

    @classmethod
    def for_provider(cls, provider: str, device_id: int) -> MeasurePlan:
        if provider == CUDA:
            on_the_gpu = ("--execution-provider", "cuda", "--cuda-device-id", str(device_id))
            serving = ServingPlan(
                # No --batch-buckets: the server's own default on CUDA (one shape, the max batch size) is what is
                # measured. With several buckets, each change of shape re-runs cuDNN's algorithm search.
                base_flags=(*on_the_gpu, "--max-batch-size", "128"),
                configurations=configurations(frontends=(2, 4, 8)),
                shapes=(RequestShape(CLASSIFY_METHOD, 1, 256), RequestShape(INFER_METHOD, 16, 32)),
                window=Window(warmup_seconds=1.0, duration_seconds=2.5),
                expected_startup_seconds=15.0,
                generator_processes=min(8, max(2, cpu_count() // 2)),
            )
            sweep = SweepPlan.for_host(cpu_count(), on_the_gpu, dry_run=False)
            return cls(("catsdogs", "mnist_net"), BATCH_SIZES, 0.25, 100, 10.0, serving, sweep)
        on_the_cpu = ("--execution-provider", "cpu")
        serving = ServingPlan(
            base_flags=(*on_the_cpu, "--max-batch-size", "32"),
            configurations=configurations(frontends=(2,)),
            shapes=(RequestShape(CLASSIFY_METHOD, 1, 8), RequestShape(INFER_METHOD, 16, 2)),
            window=Window(warmup_seconds=0.2, duration_seconds=0.4),
            expected_startup_seconds=4.0,
            generator_processes=2,
        )
        sweep = SweepPlan.for_host(cpu_count(), on_the_cpu, dry_run=True)
        return cls(("mnist_net",), BATCH_SIZES, 0.02, 16, 2.0, serving, sweep, loading_starts=1)

    def bare_seconds_per_variant(self) -> float:
        return len(self.batch_sizes) * (self.bare_seconds + 0.15) + 3.0


def run_check(options: CheckOptions, budget: Budget, argv: list[str]) -> int:
    """Measure, write the report into options.out, and return the exit code: 1 when a correctness check, a
    server or a step failed (or, with --check-targets, a target was missed), else 0."""
    result = CheckResult(
        started_at=time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(budget.started_at)),
        provider=options.provider,
        command=" ".join(["python load_tests/gpu_check.py", *argv]),
        budget_seconds=options.budget_seconds,
    )
    try:
        _measure(options, budget, result)
    except Exception as exc:
        result.errors.append(f"{type(exc).__name__}: {exc}")
        budget.say(f"stopped: {type(exc).__name__}: {exc}")
    result.targets = evaluate(result)
    result.elapsed_seconds = budget.elapsed()
    written = write_reports(result, options.out)
    budget.say(f"wrote {', '.join(path.name for path in written)} to {options.out}")
    for target in result.targets:
        budget.say(f"target {target.name}: {'not evaluated' if target.passed is None else target.passed}")
    failures = result.failures
    for failure in failures:
        budget.say(f"FAILED {failure}")
    missed = [t for t in result.targets if t.passed is False]
    return 1 if failures or (options.check_targets and missed) else 0


def _measure(options: CheckOptions, budget: Budget, result: CheckResult) -> None:
    plan = MeasurePlan.for_provider(options.provider, options.device_id)
    if options.provider == CUDA:
        result.preload_messages = preload_cuda_libraries()
    result.machine = machine_description(options.device_id)
    result.cuda_libraries = mapped_cuda_libraries()
    budget.say(f"onnxruntime {result.machine['onnxruntime']} from {result.machine['onnxruntime_file']}")
    budget.say(f"CUDA libraries mapped: {', '.join(result.cuda_libraries) or 'none'}")
    if not options.models.is_dir():
        raise RuntimeError(f"no model repository at {options.models}")
    models = repository_models(options.models)
    if not models:
        raise RuntimeError(f"{options.models} holds no model with a version")

    for model_dir in models if "correctness" in options.phases else []:
        if not budget.allows(CORRECTNESS_SECONDS[options.provider]):
            result.skipped.append(Skipped(f"correctness of {model_dir.name}", "out of time"))
            continue
        checked = check_model(model_dir, options.provider, options.device_id)
        result.correctness.append(checked)
        diff = "-" if checked.max_abs_diff is None else f"{checked.max_abs_diff:.2e}"
        agreement = "-" if checked.fp16_agreement is None else f"{checked.fp16_agreement:.1%}"
        verdict = "ok" if checked.passed else f"FAILED: {checked.problem}"
        budget.say(
            f"correctness {checked.model} on {checked.provider or '?'}: fp32 max diff {diff}, "
            f"fp16 top-1 agreement {agreement}: {verdict}"
        )

    by_name = {path.name: path for path in models}
    logs = options.out / "logs"
    if "loading" in options.phases:
        with tempfile.TemporaryDirectory(prefix="gpu-check-loading-") as scratch:
            repository = scratch_repository(models, Path(scratch))
            result.loading = check_loading(
                repository, list(by_name), plan.serving.base_flags, options.provider, plan.loading_starts, budget, logs
            )

    measured = [name for name in plan.bench_models if name in by_name]
    for name in plan.bench_models:
        if name not in by_name:
            result.skipped.append(Skipped(f"{name} (bare and server)", f"not in {options.models}"))
    for name in measured if "bare" in options.phases else []:
        _bare(name, by_name[name], plan, options, budget, result)
    for name in measured if "shapes" in options.phases else []:
        _shapes(name, by_name[name], plan, options, budget, result)

    with tempfile.TemporaryDirectory(prefix="gpu-check-") as scratch:
        if "server" in options.phases:
            supported = server_flags_supported()
            serving = plan.serving.only(options.servers) if options.servers else plan.serving
            phase = ServingPhase(serving, options.provider, options.device_id, budget, logs, supported)
            repository = scratch_repository([by_name[name] for name in measured], Path(scratch))
            try:
                phase.measure(repository, measured)
            finally:
                result.servers, result.server_points = phase.runs, phase.points
                result.skipped += phase.skipped
        if "frontends" in options.phases and SWEEP_MODEL in by_name:
            repository = scratch_repository([by_name[SWEEP_MODEL]], Path(scratch) / "sweep")
            measure_frontends(plan.sweep, repository, options.wheels, logs, budget, result, options.out)
        elif "frontends" in options.phases:
            result.skipped.append(Skipped("front-end sweep", f"{SWEEP_MODEL} is not in {options.models}"))


def _shapes(
    name: str, model_dir: Path, plan: MeasurePlan, options: CheckOptions, budget: Budget, result: CheckResult
) -> None:
    for search in (ConvAlgoSearch.EXHAUSTIVE, ConvAlgoSearch.HEURISTIC):
        what = f"shape changes of {name}, {search.value} search"
        if not budget.allows(plan.shape_seconds):
            result.skipped.append(Skipped(what, "out of time"))
            continue
        try:
            runtime = runtime_settings(options.provider, options.device_id, cudnn_conv_algo_search=search)
            cost = measure_shapes(model_dir, runtime, SHAPE_MAX_BATCH, plan.shape_batches)
        except Exception as exc:
            result.errors.append(f"{what}: {type(exc).__name__}: {exc}")
            budget.say(f"{what}: failed: {type(exc).__name__}: {exc}")
            continue
        result.shape_costs.append(cost)
        budget.say(
            f"{what}: {cost.one_shape_ms:.3f} ms a batch at one shape, {cost.changing_shapes_ms:.3f} ms with the "
            f"shape changing ({cost.ratio:.1f}x) on {cost.provider}"
        )


def _bare(name: str, model_dir: Path, plan: MeasurePlan, options: CheckOptions, budget: Budget, result: CheckResult):
    from cnnserve.repository_layout import newest_model_file

    model_path = newest_model_file(model_dir)
    assert model_path is not None
    for variant in VARIANTS:
        what = f"bare {name} {variant.name}"
        reason = unavailable_reason(variant, options.provider)
        if not reason and not budget.allows(plan.bare_seconds_per_variant()):
            reason = "out of time"
        if reason:
            result.skipped.append(Skipped(what, reason))
            continue

        def on_point(point: BarePoint, what: str = what) -> None:
            result.bare.append(point)
            budget.say(
                f"{what}, batch {point.batch_size}: {point.images_per_second:,.0f} images/s, "
                f"p50 {point.latency.p50_ms or 0:.3f} ms per run"
            )

        try:
            measure_variant(
                name,
                model_path,
                variant,
                options.provider,
                options.device_id,
                plan.batch_sizes,
                plan.bare_seconds,
                on_point,
            )
        except Exception as exc:
            message = f"{type(exc).__name__}: {exc}"
            if variant.cuda_graph:  # a finding about CUDA graphs, not a fault of the GPU or of cnnserve
                result.skipped.append(Skipped(what, f"failed: {message}"))
            else:
                result.errors.append(f"{what}: {message}")
            budget.say(f"{what}: failed: {message.splitlines()[0]}")
