"""What waiting for an answer costs a grpc.aio handler: the floor under any server whose answers come from elsewhere.

    python -m load_tests.bench.await_floor [--rounds 6] [--duration 4] [--in-flight 64] [--json PATH]

Issue 17 asks a cnnserve front-end for 0.8 of the requests/s of a bare grpc.aio server that returns a fixed
response at once (load_tests.bench.bare_grpc). A front-end cannot return at once: its handler sends the request to
the engine and awaits the answer, so the call's coroutine is suspended and resumed by the event loop. This
benchmark measures that alone: the same bare server, once answering at once and once awaiting a future that the
loop sets on its very next turn (`--await-answer`: no socket, no other process, no work), both up side by side
and measured under h2load (mnist_net's single-image ModelInfer body, as h2load_compare sends) in alternating rounds,
so the machine's drift falls on both alike. The median ratio of awaiting to answering at once is an upper bound on
what any handler that waits for an answer can reach against the bare server on this machine, before doing any
work of its own.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from contextlib import ExitStack
from pathlib import Path

from load_tests.bench import h2load
from load_tests.bench.h2load_compare import MODEL, measure_bare, running_bare_server


def measure(
    seconds: float, rounds: int, in_flight: int, connections: int, body: bytes, workdir: Path
) -> list[tuple[float, float]]:
    """(at once, awaiting) requests/s per round, both servers up together, the order alternating by round; each
    figure is the servers' own count of calls answered over the window."""
    figures = []
    with ExitStack() as stack:
        at_once = stack.enter_context(running_bare_server(workdir / "at_once.log"))
        awaiting = stack.enter_context(running_bare_server(workdir / "awaiting.log", flags=("--await-answer",)))
        for server in (at_once, awaiting):
            measure_bare(server, body, 1.0, in_flight, connections)
        for index in range(rounds):
            order = (at_once, awaiting) if index % 2 == 0 else (awaiting, at_once)
            rates = {}
            for server in order:
                measured = measure_bare(server, body, seconds, in_flight, connections)
                rates[server.target] = measured.measurement.server_successes / measured.measurement.h2load.seconds
            figures.append((rates[at_once.target], rates[awaiting.target]))
            print(
                f"round {index + 1}: at once {figures[-1][0]:,.0f} requests/s, awaiting {figures[-1][1]:,.0f} "
                f"({figures[-1][1] / figures[-1][0]:.2f})",
                flush=True,
            )
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m load_tests.bench.await_floor", description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=6, help="alternating rounds (default 6)")
    parser.add_argument(
        "--duration", type=int, default=4, help="measured seconds per server and round (whole: h2load's -D)"
    )
    parser.add_argument("--in-flight", type=int, default=64, help="calls in flight (default 64)")
    parser.add_argument("--connections", type=int, default=4, help="HTTP/2 connections (default 4)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    # The body h2load_compare sends (mnist_net's single image; the bare servers read no input name).
    body = h2load.infer_body(MODEL, "input")
    with tempfile.TemporaryDirectory(prefix="cnnserve-await-floor-") as scratch:
        figures = measure(args.duration, args.rounds, args.in_flight, args.connections, body, Path(scratch))
    ratios = [awaiting / at_once for at_once, awaiting in figures]
    print(
        f"awaiting / at once: median {statistics.median(ratios):.2f} over {len(ratios)} rounds "
        f"({min(ratios):.2f}-{max(ratios):.2f}); {args.in_flight} in flight over {args.connections} connections"
    )
    if args.json is not None:
        args.json.write_text(
            json.dumps({"rounds": [{"at_once": a, "awaiting": b} for a, b in figures], "ratios": ratios}, indent=1)
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
