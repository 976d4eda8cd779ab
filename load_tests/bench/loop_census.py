"""Where each process's event loop spends its time per call, by callback: cnnserve beside a bare grpc.aio server.

    python -m load_tests.bench.loop_census [--frontends 0,1] [--duration 5] [--in-flight 64] [--top 12] [--json PATH]

A sampling profiler attributes a loop's time to the innermost Python frame it sees, and grpc.aio's Cython core runs
a handler's coroutine from inside its own steps, so a handler's work can show up as gRPC's. This measures instead:
every process of the server, and of the bare server beside it (load_tests.bench.bare_grpc), starts with
`census_hook` first on PYTHONPATH, which times every callback its asyncio loop runs (a task's step under its
coroutine's name: grpc.aio's `_handle_exceptions` is the step that runs a call's handler), counts the loop's turns
and its time waiting in the selector, and times the garbage collector's collections. Totals are read before and
after an h2load window (mnist_net's single-image ModelInfer, as load_tests.bench.h2load_compare sends) and divided
by the calls the server answered over it.

The hook costs each callback a microsecond or so, alike in every process, so the figures compare the two servers
of one run (which callbacks cnnserve adds, and how much longer its handler step takes than the bare one's), not
requests/s with runs without it.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

from cnnserve.server import launcher
from load_tests.bench import h2load
from load_tests.bench._cpu import descendants
from load_tests.bench.h2load_compare import (
    MODEL,
    WARM_UP_SECONDS,
    frontend_counts,
    measure_bare,
    process_roles,
    running_bare_server,
)
from load_tests.bench.models import add_model_options, model_from_options, single_model_repository

HOOK = Path(__file__).with_name("census_hook")
DIRECTORY_VARIABLE = "CNNSERVE_LOOP_CENSUS_DIR"
_SNAPSHOT_TIMEOUT = 5.0


@dataclass(frozen=True)
class Callback:
    """One kind of callback a loop ran: a task's steps by coroutine, or a plain callback by its name."""

    name: str
    per_call: float
    """How many times it ran per call answered."""
    microseconds_per_call: float


@dataclass(frozen=True)
class ProcessCensus:
    """One process's loop over a window, per call the server answered."""

    role: str
    pid: int
    turns_per_call: float
    callbacks_per_call: float
    callback_microseconds_per_call: float
    """Time in callbacks: the loop's work (Python and the C it calls), not its waits."""
    select_microseconds_per_call: float
    """Time in the selector: idle, or the kernel's part of waking up."""
    callbacks: tuple[Callback, ...]
    """Every callback, most time first."""
    collections_per_1000_calls: tuple[float, float, float]
    """The garbage collector's collections of each generation (young, middle, oldest: the whole heap)."""
    collection_microseconds_per_call: float
    """Time in those collections, in any thread (mostly inside the loop's callbacks, whose time includes it)."""


@dataclass(frozen=True)
class ServerCensus:
    server: str
    calls: int
    seconds: float
    processes: tuple[ProcessCensus, ...]

    @property
    def calls_per_second(self) -> float:
        return self.calls / self.seconds if self.seconds > 0 else 0.0


def census_environment(directory: Path, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """`base` (this process's environment when None) with the hook first on PYTHONPATH, writing into `directory`."""
    environment = dict(os.environ if base is None else base)
    path = environment.get("PYTHONPATH")
    environment["PYTHONPATH"] = os.pathsep.join([str(HOOK), path] if path else [str(HOOK)])
    environment[DIRECTORY_VARIABLE] = str(directory)
    return environment


@contextmanager
def _environment(values: Mapping[str, str]) -> Iterator[None]:
    """This process's environment replaced by `values` while the block runs (for servers started without an
    environment of their own)."""
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(values)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def snapshot(pids: list[int], directory: Path) -> dict[int, dict]:
    """Every process's running totals: each is asked (SIGUSR2) and answers by replacing its file."""
    before = {pid: _snapshot_number(directory / f"{pid}.json") for pid in pids}
    for pid in pids:
        os.kill(pid, signal.SIGUSR2)
    deadline = time.monotonic() + _SNAPSHOT_TIMEOUT
    found: dict[int, dict] = {}
    while len(found) < len(pids):
        for pid in pids:
            if pid in found:
                continue
            path = directory / f"{pid}.json"
            if _snapshot_number(path) > before[pid]:
                found[pid] = json.loads(path.read_text())
        if len(found) < len(pids):
            if time.monotonic() > deadline:
                missing = sorted(set(pids) - set(found))
                raise RuntimeError(f"processes {missing} wrote no census (was the hook on their PYTHONPATH?)")
            time.sleep(0.02)
    return found


def _snapshot_number(path: Path) -> int:
    try:
        return int(json.loads(path.read_text())["snapshots"])
    except (OSError, ValueError, KeyError):
        return 0


def compare(before: dict, after: dict, role: str, pid: int, calls: int) -> ProcessCensus:
    """One process's census between two of its snapshots, per call."""
    per = max(calls, 1)
    callbacks = []
    for name, (count, seconds) in after["callbacks"].items():
        start_count, start_seconds = before["callbacks"].get(name, (0, 0.0))
        if count > start_count:
            callbacks.append(Callback(name, (count - start_count) / per, (seconds - start_seconds) / per * 1e6))
    callbacks.sort(key=lambda callback: -callback.microseconds_per_call)
    return ProcessCensus(
        role,
        pid,
        (after["turns"] - before["turns"]) / per,
        sum(callback.per_call for callback in callbacks),
        sum(callback.microseconds_per_call for callback in callbacks),
        (after["select_seconds"] - before["select_seconds"]) / per * 1e6,
        tuple(callbacks),
        tuple(  # type: ignore[arg-type]
            (end - start) / per * 1000
            for start, end in zip(before["gc"]["collections"], after["gc"]["collections"], strict=True)
        ),
        (sum(after["gc"]["seconds"]) - sum(before["gc"]["seconds"])) / per * 1e6,
    )


def measure_cnnserve(
    repository: Path, frontends: int, seconds: float, in_flight: int, connections: int, workdir: Path
) -> ServerCensus:
    directory = workdir / f"census-cnnserve-{frontends}"
    directory.mkdir()
    with launcher.running_server(
        repository,
        "--frontends",
        str(frontends),
        log_path=workdir / f"cnnserve-{frontends}.log",
        environment=census_environment(directory),
    ) as server:
        body = h2load.infer_body(MODEL, h2load.input_name(server.target, MODEL))
        h2load.measure(server.target, MODEL, body, WARM_UP_SECONDS, in_flight, connections)
        pids = [server.pid, *descendants(server.pid)]
        before = snapshot(pids, directory)
        measured = h2load.measure(server.target, MODEL, body, seconds, in_flight, connections)
        after = snapshot(pids, directory)
        roles = process_roles(server.pid, server.log(), pids)
    calls = measured.server_successes
    processes = tuple(compare(before[pid], after[pid], roles[pid], pid, calls) for pid in pids)
    name = "cnnserve, one process" if frontends == 0 else f"cnnserve, {frontends} front-end(s)"
    return ServerCensus(name, calls, measured.h2load.seconds, _busiest_first(processes))


def measure_bare_census(seconds: float, in_flight: int, connections: int, body: bytes, workdir: Path) -> ServerCensus:
    directory = workdir / "census-bare"
    directory.mkdir()
    with _environment(census_environment(directory)), running_bare_server(workdir / "bare.log") as server:
        measure_bare(server, body, WARM_UP_SECONDS, in_flight, connections)
        pid = server.pid
        before = snapshot([pid], directory)
        measured = measure_bare(server, body, seconds, in_flight, connections)
        after = snapshot([pid], directory)
    calls = measured.measurement.server_successes
    process = compare(before[pid], after[pid], "bare", pid, calls)
    return ServerCensus("bare grpc.aio", calls, measured.measurement.h2load.seconds, (process,))


def _busiest_first(processes: tuple[ProcessCensus, ...]) -> tuple[ProcessCensus, ...]:
    return tuple(sorted(processes, key=lambda process: -process.callback_microseconds_per_call))


def report(census: ServerCensus, top: int) -> str:
    lines = [f"{census.server}: {census.calls:,} calls in {census.seconds:.1f} s ({census.calls_per_second:,.0f}/s)"]
    for process in census.processes:
        if process.callbacks_per_call < 0.01:
            continue
        lines.append(
            f"  {process.role} (pid {process.pid}): {process.callback_microseconds_per_call:.1f} us of callbacks "
            f"and {process.select_microseconds_per_call:.1f} us in select a call; {process.turns_per_call:.2f} "
            f"turns, {process.callbacks_per_call:.2f} callbacks; garbage collection "
            f"{process.collection_microseconds_per_call:.1f} us a call (per 1,000 calls, by generation: "
            f"{', '.join(f'{count:.1f}' for count in process.collections_per_1000_calls)})"
        )
        for callback in process.callbacks[:top]:
            lines.append(f"    {callback.microseconds_per_call:8.1f} us {callback.per_call:6.2f}x  {callback.name}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m load_tests.bench.loop_census", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--frontends", type=frontend_counts, default=[1], help="comma-separated front-end counts (default 1)"
    )
    add_model_options(parser, MODEL)
    parser.add_argument("--duration", type=int, default=5, help="measured seconds per server (whole: h2load's -D)")
    parser.add_argument("--in-flight", type=int, default=64, help="calls in flight (default 64)")
    parser.add_argument("--connections", type=int, default=4, help="HTTP/2 connections (default 4)")
    parser.add_argument("--top", type=int, default=12, help="callbacks shown per process (default 12)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    if args.in_flight % args.connections:
        parser.error(f"--in-flight {args.in_flight} must be a multiple of --connections {args.connections}")
    if h2load.said_missing():
        return 2
    model = model_from_options(MODEL, args)
    censuses = []
    with tempfile.TemporaryDirectory(prefix="cnnserve-loop-census-") as scratch:
        workdir = Path(scratch)
        repository = single_model_repository(model, workdir / "repository")
        for count in args.frontends:
            censuses.append(
                measure_cnnserve(repository, count, args.duration, args.in_flight, args.connections, workdir)
            )
            print(report(censuses[-1], args.top), flush=True)
        body = h2load.infer_body(MODEL, "input")
        censuses.append(measure_bare_census(args.duration, args.in_flight, args.connections, body, workdir))
        print(report(censuses[-1], args.top), flush=True)
    if args.json is not None:
        args.json.write_text(json.dumps([asdict(census) for census in censuses], indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
