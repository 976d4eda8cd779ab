"""Bursts right after a lone caller: does the server batch them, or run them one call a batch?

    python -m load_tests.bench.burst_after_lone [--frontends 0] [--tries 30] [--lone-calls 50] [--burst 160]
        [--threads 16] [--model-repository R] [--json PATH]

A single process runs a lone call's batch on its own event loop, and grpc.aio hands a handler the calls its
transport already holds one at a time, a few loop turns apart. If the loop took each batch at once, a burst of
concurrent callers could run as a convoy of lone calls: every call alone in its batch, for the whole burst
(server/drain.py, `CallGate.serves_one_call`, which lets the loop turn first). This measures that case. The
server (`cnnserve serve --frontends N`, mnist_net) gets `--tries` tries; each sends `--lone-calls` ModelInfer
calls one after the other, then `--burst` calls from `--threads` threads at once, and reads from the server's
own statistics (ModelStatistics) how many batches the burst ran as. A burst of at least half as many batches as
calls counts as unbatched. Prints each try, then the unbatched bursts, batches per burst and calls/s of batched
and unbatched bursts.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import grpc

from cnnserve.server import launcher
from load_tests.bench import h2load
from load_tests.bench.h2load_compare import MODEL
from load_tests.bench.models import add_model_options, model_from_options, single_model_repository


@dataclass(frozen=True)
class Burst:
    """One try's burst: how many calls it made, in how many batches, how fast."""

    calls: int
    batches: int
    calls_per_second: float

    @property
    def unbatched(self) -> bool:
        return self.batches >= self.calls / 2


@dataclass(frozen=True)
class Summary:
    tries: int
    unbatched: int
    batches_median: float
    batches_mean: float
    batches_max: int
    batched_calls_per_second: float | None
    """The median over the batched bursts (None when there was none)."""
    unbatched_calls_per_second: float | None


def try_once(
    target: str, infer: Callable[..., object], request: object, lone_calls: int, burst: int, threads: int
) -> Burst:
    """A lone caller's `lone_calls`, then `burst` calls from `threads` threads at once (`infer`: ModelInfer)."""
    for _ in range(lone_calls):
        infer(request, timeout=30)
    before = h2load.server_counts(target, MODEL).executions
    started = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(lambda _: infer(request, timeout=30), range(burst)))
    seconds = time.perf_counter() - started
    batches = h2load.server_counts(target, MODEL).executions - before
    return Burst(burst, batches, burst / seconds)


def summarise(bursts: list[Burst]) -> Summary:
    batches = [each.batches for each in bursts]
    batched = [each.calls_per_second for each in bursts if not each.unbatched]
    unbatched = [each.calls_per_second for each in bursts if each.unbatched]
    return Summary(
        len(bursts),
        len(unbatched),
        statistics.median(batches),
        statistics.fmean(batches),
        max(batches),
        statistics.median(batched) if batched else None,
        statistics.median(unbatched) if unbatched else None,
    )


def report(summary: Summary, calls: int) -> str:
    def rate(value: float | None) -> str:
        return "-" if value is None else f"{value:,.0f}"

    return "\n".join(
        [
            f"{MODEL}, bursts of {calls} calls right after a lone caller, {summary.tries} tries",
            "",
            "| unbatched bursts | batches per burst: median / mean / max | calls/s batched | calls/s unbatched |",
            "|---|---|---|---|",
            f"| {summary.unbatched} of {summary.tries} | {summary.batches_median:g} / {summary.batches_mean:.1f} / "
            f"{summary.batches_max} | {rate(summary.batched_calls_per_second)} | "
            f"{rate(summary.unbatched_calls_per_second)} |",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m load_tests.bench.burst_after_lone", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--frontends", type=int, default=0, help="cnnserve serve --frontends (default 0: one process)")
    parser.add_argument("--tries", type=int, default=30, help="lone caller + burst, this many times (default 30)")
    parser.add_argument("--lone-calls", type=int, default=50, help="a lone caller's calls before each burst")
    parser.add_argument("--burst", type=int, default=160, help="calls per burst (default 160)")
    parser.add_argument("--threads", type=int, default=16, help="threads calling at once in a burst (default 16)")
    add_model_options(parser, MODEL)
    parser.add_argument("--json", type=Path, help="also write every figure here")
    args = parser.parse_args(argv)
    if min(args.tries, args.burst, args.threads) < 1 or args.lone_calls < 0 or args.frontends < 0:
        parser.error("--tries, --burst and --threads must be at least 1, --lone-calls and --frontends at least 0")
    model = model_from_options(MODEL, args)
    bursts: list[Burst] = []
    with tempfile.TemporaryDirectory(prefix="cnnserve-burst-") as scratch:
        workdir = Path(scratch)
        repository = single_model_repository(model, workdir / "repository")
        flags = ("--frontends", str(args.frontends))
        try:
            with launcher.running_server(repository, *flags, log_path=workdir / "cnnserve.log") as server:
                request = h2load.infer_request(MODEL, h2load.input_name(server.target, MODEL))
                with grpc.insecure_channel(server.target) as channel:
                    infer = h2load.inference_stub(channel).ModelInfer
                    for index in range(args.tries):
                        burst = try_once(server.target, infer, request, args.lone_calls, args.burst, args.threads)
                        bursts.append(burst)
                        print(
                            f"try {index + 1}: {burst.batches} batches, {burst.calls_per_second:,.0f} calls/s"
                            + (" (unbatched)" if burst.unbatched else ""),
                            flush=True,
                        )
        except launcher.ServerStartError as exc:
            print(exc, file=sys.stderr)
            return 1
    summary = summarise(bursts)
    print()
    print(report(summary, args.burst))
    if args.json is not None:
        figures = {"bursts": [asdict(each) for each in bursts], "summary": asdict(summary)}
        args.json.write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
