"""Bare ONNX Runtime on the GPU: the ceiling the server is compared with, per batch size and way of running.

Sessions are built by the server's own builder (`create_session`, with its CUDA options), so the comparison is
between the server and the same sessions without it. Ways of running (`BareVariant`):

- `run`: `session.run` from a numpy batch, as a plain client would: ONNX Runtime copies the batch to the GPU and
  the output back on every call;
- `io_binding`: input and output live on the device (OrtValues bound once), so a run is pure compute: the best
  the GPU can do with this graph;
- `cuda_graph`: as io_binding, with the session's runs captured as CUDA graphs (one graph id per batch size)
  and replayed: one launch instead of one per kernel, which matters for small graphs at small batches;

each in fp32 and in fp16 (the server's conversion). Timing: a few untimed warm-up runs per batch size (cuDNN's
algorithm search, the graph capture), then back-to-back runs for a fixed time; the device is synchronised before
the clock stops, so queued work is never counted as done.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from cnnserve.server.precision import fp16_model
from cnnserve.server.runtime import create_session
from load_tests.bench.results import LatencySummary
from load_tests.gpu.cli import CUDA as CUDA_CHOICE
from load_tests.gpu.correctness import expected_provider, runtime_settings
from load_tests.gpu.results import BarePoint

WARMUP_RUNS = 3
MIN_RUNS = 3


@dataclass(frozen=True)
class BareVariant:
    name: str
    precision: str
    """fp32 or fp16."""
    io_binding: bool
    cuda_graph: bool = False


VARIANTS = (
    BareVariant("fp32 run", "fp32", io_binding=False),
    BareVariant("fp32 io_binding", "fp32", io_binding=True),
    BareVariant("fp16 run", "fp16", io_binding=False),
    BareVariant("fp16 io_binding", "fp16", io_binding=True),
    BareVariant("fp32 cuda_graph", "fp32", io_binding=True, cuda_graph=True),
    BareVariant("fp16 cuda_graph", "fp16", io_binding=True, cuda_graph=True),
)


def unavailable_reason(variant: BareVariant, provider: str) -> str:
    """Why `variant` cannot run on `provider`; empty when it can."""
    if variant.cuda_graph and provider != CUDA_CHOICE:
        return "CUDA graphs need the CUDA provider"
    return ""


def measure_variant(
    model: str,
    model_path: Path,
    variant: BareVariant,
    provider: str,
    device_id: int,
    batch_sizes: tuple[int, ...],
    seconds: float,
    on_point: Callable[[BarePoint], None],
) -> list[BarePoint]:
    """Images/s of `variant` at each batch size. Raises RuntimeError when the session does not run on the
    provider asked for, and whatever ONNX Runtime raises."""
    runtime = runtime_settings(provider, device_id, cuda_graphs=variant.cuda_graph)
    converted = fp16_model(model_path) if variant.precision == "fp16" else None
    loaded = create_session(model_path, runtime, converted)
    if loaded.provider != expected_provider(provider):
        raise RuntimeError(f"the session runs on {loaded.provider}, not {expected_provider(provider)}")
    session = loaded.session
    device = "cuda" if provider == CUDA_CHOICE else "cpu"
    points = []
    for graph_id, batch_size in enumerate(batch_sizes, start=1):
        run, synchronize = _runner(session, variant, batch_size, device, device_id, graph_id)
        for _ in range(WARMUP_RUNS):
            run()
        synchronize()
        point = _time_runs(model, variant.name, batch_size, run, synchronize, seconds)
        points.append(point)
        on_point(point)
    return points


def _runner(
    session: ort.InferenceSession, variant: BareVariant, batch_size: int, device: str, device_id: int, graph_id: int
) -> tuple[Callable[[], object], Callable[[], None]]:
    """A call that runs one batch the variant's way, and one that waits for the device to finish."""
    model_input = session.get_inputs()[0]
    output_name = session.get_outputs()[0].name
    dtype = np.uint8 if model_input.type == "tensor(uint8)" else np.float32
    shape = (batch_size, *(int(d) for d in model_input.shape[1:]))
    batch = np.random.default_rng(batch_size).random(shape, dtype=np.float32).astype(dtype)
    if not variant.io_binding:
        feed = {model_input.name: batch}
        return (lambda: session.run([output_name], feed)), (lambda: None)
    probe_options = None
    if variant.cuda_graph:  # a plain run on a CUDA graph session must not be captured: graph id -1
        probe_options = ort.RunOptions()
        probe_options.add_run_config_entry("gpu_graph_id", "-1")
    output_shape = session.run([output_name], {model_input.name: batch}, probe_options)[0].shape
    input_value = ort.OrtValue.ortvalue_from_numpy(batch, device, device_id)
    output_value = ort.OrtValue.ortvalue_from_shape_and_type(output_shape, np.float32, device, device_id)
    binding = session.io_binding()
    binding.bind_ortvalue_input(model_input.name, input_value)
    binding.bind_ortvalue_output(output_name, output_value)
    options = None
    if variant.cuda_graph:
        options = ort.RunOptions()
        options.add_run_config_entry("gpu_graph_id", str(graph_id))

    def run() -> None:
        # The values are referenced here so they live as long as the binding that points at them.
        session.run_with_iobinding(binding, options)
        assert input_value is not None and output_value is not None

    return run, binding.synchronize_outputs


def _time_runs(
    model: str,
    variant: str,
    batch_size: int,
    run: Callable[[], object],
    synchronize: Callable[[], None],
    seconds: float,
) -> BarePoint:
    latencies: list[float] = []
    started = time.perf_counter()
    while len(latencies) < MIN_RUNS or time.perf_counter() - started < seconds:
        call_started = time.perf_counter()
        run()
        latencies.append(time.perf_counter() - call_started)
    synchronize()
    elapsed = time.perf_counter() - started
    return BarePoint(
        model=model,
        variant=variant,
        batch_size=batch_size,
        runs=len(latencies),
        images_per_second=batch_size * len(latencies) / elapsed,
        latency=LatencySummary.of(np.asarray(latencies)),
    )
