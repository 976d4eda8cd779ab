"""One caller at a time: cnnserve's latency as a single process and with front-ends, side by side.

    python -m load_tests.bench.lone_caller [--frontends 0,2] [--calls 2000] [--warm-up 200] [--rounds 4]
        [--model-repository R] [--json PATH]

A caller alone never shares a batch, so what it waits for is the path itself: with front-ends, two more hops
between processes and the engine's steps. For each front-end count in `--frontends` (`cnnserve serve
--frontends N`; 0: one process, the default on a host without a GPU), one round starts the server, sends
`--warm-up` and then `--calls` single-image ModelInfer calls of mnist_net from one synchronous caller, one after
the other, and stops it; the rounds alternate their order. Each server's p50 and p99 are printed as measured,
then a Markdown table of their medians over the rounds and of the ratios to the single process taken within each
round (the machine's speed drifts between rounds, not within one). Issue 17's target is a p99 ratio of at most 1.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import grpc
import numpy as np

from cnnserve.server import launcher
from load_tests.bench import h2load
from load_tests.bench.h2load_compare import MODEL, frontend_counts
from load_tests.bench.models import add_model_options, model_from_options, single_model_repository


@dataclass(frozen=True)
class Latency:
    """One server in one round: its lone caller's latencies, in milliseconds."""

    frontends: int
    round: int
    p50_ms: float
    p99_ms: float
    calls: int


@dataclass(frozen=True)
class Summary:
    """One front-end count over every round."""

    frontends: int
    p50_ms: float
    p99_ms: float
    p50_ratio: float | None
    """Over the single process's p50 of the same round (median over rounds); None when 0 was not run."""
    p99_ratio: float | None


def measure(target: str, calls: int, warm_up: int) -> tuple[float, float]:
    """p50 and p99 (ms) of `calls` ModelInfer calls sent one after the other, after `warm_up` unmeasured ones."""
    request = h2load.infer_request(MODEL, h2load.input_name(target, MODEL))
    with grpc.insecure_channel(target) as channel:
        infer = h2load.inference_stub(channel).ModelInfer
        for _ in range(warm_up):
            infer(request, timeout=30)
        seconds = []
        for _ in range(calls):
            started = time.perf_counter()
            infer(request, timeout=30)
            seconds.append(time.perf_counter() - started)
    p50, p99 = np.percentile(seconds, [50, 99])
    return 1000 * float(p50), 1000 * float(p99)


def run(
    repository: Path,
    workdir: Path,
    frontends: Sequence[int],
    calls: int,
    warm_up: int,
    rounds: int,
    on_latency: Callable[[Latency], object] | None = None,
) -> list[Latency]:
    """Every front-end count in every round (every other round in reverse order). Raises ServerStartError."""
    measured = []
    for round_index in range(rounds):
        for count in frontends if round_index % 2 == 0 else list(reversed(frontends)):
            flags = ("--frontends", str(count))
            with launcher.running_server(repository, *flags, log_path=workdir / f"cnnserve-{count}.log") as server:
                p50, p99 = measure(server.target, calls, warm_up)
            measured.append(Latency(count, round_index, p50, p99, calls))
            if on_latency is not None:
                on_latency(measured[-1])
    return measured


def summarise(measured: Sequence[Latency]) -> list[Summary]:
    """Per front-end count, in the order first measured: medians over the rounds, and of the per-round ratios to
    the single process."""
    single = {each.round: each for each in measured if each.frontends == 0}
    summaries = []
    for count in dict.fromkeys(each.frontends for each in measured):
        rows = [each for each in measured if each.frontends == count]
        paired = [(each, single[each.round]) for each in rows if each.round in single]
        summaries.append(
            Summary(
                count,
                statistics.median(each.p50_ms for each in rows),
                statistics.median(each.p99_ms for each in rows),
                statistics.median(each.p50_ms / base.p50_ms for each, base in paired) if paired else None,
                statistics.median(each.p99_ms / base.p99_ms for each, base in paired) if paired else None,
            )
        )
    return summaries


def report(measured: Sequence[Latency]) -> str:
    rounds = len({each.round for each in measured})
    lines = [
        f"{MODEL} single image, one caller, {measured[0].calls} calls per server; medians of {rounds} round(s)",
        "",
        "| front-ends | p50 (ms) | p99 (ms) | p50 / single process | p99 / single process |",
        "|---|---|---|---|---|",
    ]
    for summary in summarise(measured):
        ratios = ["-" if ratio is None else f"{ratio:.2f}" for ratio in (summary.p50_ratio, summary.p99_ratio)]
        name = summary.frontends if summary.frontends else "0 (single process)"
        lines.append(f"| {name} | {summary.p50_ms:.2f} | {summary.p99_ms:.2f} | {ratios[0]} | {ratios[1]} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m load_tests.bench.lone_caller", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--frontends",
        type=frontend_counts,
        default=[0, 2],
        help="comma-separated front-end counts, 0 for a single process (default 0,2)",
    )
    add_model_options(parser, MODEL)
    parser.add_argument("--calls", type=int, default=2000, help="measured calls per server (default 2000)")
    parser.add_argument("--warm-up", type=int, default=200, help="unmeasured calls first (default 200)")
    parser.add_argument("--rounds", type=int, default=4, help="rounds, alternating their order (default 4)")
    parser.add_argument("--json", type=Path, help="also write every figure here")
    args = parser.parse_args(argv)
    if args.calls < 1 or args.warm_up < 0 or args.rounds < 1:
        parser.error("--calls and --rounds must be at least 1, --warm-up at least 0")
    model = model_from_options(MODEL, args)
    with tempfile.TemporaryDirectory(prefix="cnnserve-lone-caller-") as scratch:
        workdir = Path(scratch)
        repository = single_model_repository(model, workdir / "repository")

        def show(latency: Latency) -> None:
            print(
                f"round {latency.round + 1}, front-ends {latency.frontends}: "
                f"p50 {latency.p50_ms:.2f} ms, p99 {latency.p99_ms:.2f} ms",
                flush=True,
            )

        try:
            measured = run(repository, workdir, args.frontends, args.calls, args.warm_up, args.rounds, show)
        except launcher.ServerStartError as exc:
            print(exc, file=sys.stderr)
            return 1
    print()
    print(report(measured))
    if args.json is not None:
        figures = {"rows": [asdict(each) for each in measured], "medians": [asdict(s) for s in summarise(measured)]}
        args.json.write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
