"""What a change of batch shape costs a session: the same batches run at one shape and at changing shapes.

    python -m load_tests.bench.shape_changes [--provider auto] [--model mnist_net] [--max-batch-size 32]
        [--batches 300] [--searches exhaustive,heuristic] [--model-repository R] [--json PATH]

Under load the batcher forms batches of every size from 1 to the max. A session that sees a new input shape may
redo per-shape work at that run: on CUDA, cuDNN chooses its convolution algorithms again. This is why the
server runs every CUDA batch at one shape (the max batch size) unless `--batch-buckets` says otherwise, and this
benchmark is the measurement behind that default. On an H200 (2026-11-27), mnist_net's run took 0.18 ms at one
shape and 23-33 ms when the shape changed from batch to batch (4-6 ms with the heuristic search).

Each search mode gets two sessions built as the server builds them (`create_session`), each under one of the
server's own runners: one whose only bucket is the max batch size, and one with the powers of two up to it. Both
run the same sequence of batch sizes (1 to the max, in a fixed shuffled order), alternating batch by batch, so
the machine's drift falls on both alike. Each needs a session of its own: a session chooses again when its input
shape differs from its last run's, so one session under both runners made the one-shape runner pay for the
other's changes too (this benchmark's first GPU run, on an H200, measured 31 ms a batch both ways). It prints
each mode's median milliseconds per batch both ways and their ratio, then a Markdown table. On the CPU, which
keeps no per-shape state, changing shapes cost less than one (smaller batches compute less); on CUDA a ratio far
above one is the cost of the changes.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from cnnserve.repository_layout import newest_model_file
from cnnserve.server.model_config import ModelConfig
from cnnserve.server.model_spec import ModelSpec, load_spec
from cnnserve.server.runtime import CUDA, create_session
from cnnserve.server.session_runner import RunPlan, SessionRunner
from cnnserve.server.settings import ConvAlgoSearch, ExecutionProvider, RuntimeSettings
from load_tests.bench.models import add_model_options, model_from_options


@dataclass(frozen=True)
class ShapeCost:
    model: str
    search: str
    provider: str
    one_shape_ms: float
    """Median milliseconds per batch, every batch padded to the max batch size."""
    changing_shapes_ms: float
    """Median milliseconds per batch, each batch padded to the next power of two (its shape changes)."""

    @property
    def ratio(self) -> float:
        return self.changing_shapes_ms / self.one_shape_ms


def powers_of_two_through(largest: int) -> tuple[int, ...]:
    """1, 2, 4, ... up to `largest`, and `largest` itself when it is not a power of two."""
    sizes = [1 << shift for shift in range(largest.bit_length()) if 1 << shift <= largest]
    return (*sizes, largest) if sizes[-1] != largest else tuple(sizes)


def batch_sizes(max_batch_size: int, count: int) -> list[int]:
    """`count` batch sizes covering 1 to `max_batch_size`, shuffled in a fixed order."""
    sizes = np.resize(np.arange(1, max_batch_size + 1), count)
    np.random.default_rng(0).shuffle(sizes)
    return [int(size) for size in sizes]


def measure(model_dir: Path, runtime: RuntimeSettings, max_batch_size: int, batches: int) -> ShapeCost:
    """Both runners, each over a session of its own (built with `runtime`, its cuDNN search included), over the same
    batch sizes, alternating; raises what ONNX Runtime raises."""
    model_file = newest_model_file(model_dir)
    if model_file is None:
        raise RuntimeError(f"{model_dir} holds no model version")
    config = ModelConfig.read(model_dir)

    def runner(buckets: tuple[int, ...]) -> tuple[SessionRunner, ModelSpec, str]:
        loaded = create_session(model_file, runtime)
        spec = load_spec(loaded.session, model_file, config, model_dir.name)
        device = "cuda" if loaded.provider == CUDA else "cpu"
        plan = RunPlan(buckets=buckets, device=device, device_id=runtime.cuda_device_id)
        return SessionRunner(loaded.session, spec, plan, 1), spec, loaded.provider

    one_shape, spec, provider = runner((max_batch_size,))
    changing, _, _ = runner(powers_of_two_through(max_batch_size))
    for runner in (one_shape, changing):
        runner.warm_up(())
    images = np.random.default_rng(1).random((max_batch_size, *spec.preprocessing.input_shape), dtype=np.float32)
    timings: dict[str, list[float]] = {"one": [], "changing": []}
    for size in batch_sizes(max_batch_size, batches):
        for name, runner in (("one", one_shape), ("changing", changing)):
            started = time.perf_counter()
            runner.run(images[:size])
            timings[name].append(time.perf_counter() - started)
    return ShapeCost(
        model_dir.name,
        runtime.cudnn_conv_algo_search.value,
        provider,
        statistics.median(timings["one"]) * 1e3,
        statistics.median(timings["changing"]) * 1e3,
    )


def report(costs: list[ShapeCost], max_batch_size: int) -> str:
    """A Markdown table of `costs`, one row per model and search, under a line saying what was run."""
    lines = [
        f"Batches of 1 to {max_batch_size} in a shuffled order, medians per batch",
        "",
        "| model | cuDNN search | provider | one shape (ms) | changing shapes (ms) | changing / one |",
        "|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {cost.model} | {cost.search} | {cost.provider} | {cost.one_shape_ms:.3f} | "
        f"{cost.changing_shapes_ms:.3f} | {cost.ratio:.2f} |"
        for cost in costs
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m load_tests.bench.shape_changes", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--provider", choices=[p.value for p in ExecutionProvider], default="auto")
    parser.add_argument("--model", default="mnist_net", help="the model to run (default mnist_net)")
    parser.add_argument("--max-batch-size", type=int, default=32, help="the largest batch (default 32)")
    parser.add_argument("--batches", type=int, default=300, help="batches run each way per search (default 300)")
    parser.add_argument(
        "--searches",
        default="exhaustive,heuristic",
        help="comma-separated cudnn_conv_algo_search modes (default exhaustive,heuristic)",
    )
    add_model_options(parser, "--model")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    if args.max_batch_size < 1 or args.batches < 1:
        parser.error("--max-batch-size and --batches must be at least 1")
    try:
        searches = [ConvAlgoSearch(name) for name in args.searches.split(",")]
    except ValueError as exc:
        parser.error(f"--searches: {exc}")
    model = model_from_options(args.model, args)
    model_dir = model.model_path.parent.parent
    costs = []
    for search in searches:
        runtime = RuntimeSettings(execution_provider=ExecutionProvider(args.provider), cudnn_conv_algo_search=search)
        cost = measure(model_dir, runtime, args.max_batch_size, args.batches)
        print(
            f"{search.value}: one shape {cost.one_shape_ms:.3f} ms, changing shapes {cost.changing_shapes_ms:.3f} ms "
            f"per batch ({cost.ratio:.2f}x) on {cost.provider}",
            flush=True,
        )
        costs.append(cost)
    print()
    print(report(costs, args.max_batch_size))
    if args.json is not None:
        args.json.write_text(json.dumps([{**asdict(cost), "ratio": cost.ratio} for cost in costs], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
