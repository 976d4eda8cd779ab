"""cnnserve against a bare grpc.aio server, side by side, under h2load (a C load generator).

    python -m load_tests.bench.h2load_compare [--frontends 0[,1,2...]] [--model-repository R] [--duration 10]
        [--rounds 1] [--in-flight 64] [--connections C] [--h2load-threads 1] [--profile-dir D]
        [--server-flags="FLAGS"] [--json PATH] [--plot PATH]

One run measures, one after the other on the same machine and for each front-end count listed in `--frontends`
(default 0): `cnnserve serve` answering mnist_net's single-image ModelInfer (0: one process, as by default; N:
`--frontends N`, N gRPC front-end processes sharing the port and one engine process), then
load_tests.bench.bare_grpc answering the same calls with a fixed response from as many processes sharing the
port (one for 0 and 1, N for N). Each server is measured for `--duration` seconds after a one-second warm-up.
With `--rounds R` the whole sweep runs R times, every other round in reverse order, and the table gives each
figure's median over the rounds: a small machine's speed drifts by up to 2x within minutes, so only figures
measured side by side compare, and the ratios are taken within each round before their median.

Requests/s come from each server's own success count: cnnserve's ModelStatistics (which covers all its
processes), and the sum of what each bare process counted; cnnserve's average batch size comes from the same
statistics. It prints, per front-end count, both requests/s and their ratio, then a Markdown table: cnnserve,
its average batch, bare, cnnserve / bare, and cnnserve over the single-process cnnserve of the same round (when 0
is listed). `--json` writes every figure, `--plot` a PNG bar chart of
requests/s against front-ends. SO_REUSEPORT hands each connection to one of the processes sharing the port, so
the default is 16 connections when a count above 1 is listed (4 otherwise), so that no process goes without.
Exits 2, saying `apt-get install nghttp2-client`, when h2load is missing, and 1, with the server's log, when a
server does not start or h2load fails.
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

from cnnserve.server import launcher
from load_tests.bench import h2load, profiling
from load_tests.bench._cpu import ProcessCpu, tree_cpu
from load_tests.bench.models import add_model_options, model_from_options, single_model_repository

MODEL = "mnist_net"
WARM_UP_SECONDS = 1.0
BARE_SERVER = Path(__file__).with_name("bare_grpc.py")
"""Started as a file, which needs only installed packages (the GPU check measures with safe paths, where
`-m load_tests...` finds nothing); not imported here, since importing it loads the generated `inference` modules,
which clash with tritonclient's in a process that has both."""


@dataclass(frozen=True)
class BareServer:
    """A running load_tests.bench.bare_grpc: the shared port h2load drives, and each process's own stats port."""

    target: str
    stats_targets: tuple[str, ...]
    pid: int
    """The process started: with one process, the one that serves; with several, their parent."""


@dataclass(frozen=True)
class BareMeasurement:
    """One h2load run against the bare server, with the successes each of its processes counted."""

    measurement: h2load.Measurement
    per_process: tuple[int, ...]


@dataclass(frozen=True)
class ProcessLoad:
    """One process of cnnserve over its measured run: its CPU (cores) and its main thread's share of one core
    (the event loop of a front-end, of the engine or of the single-process server). A loop near 1.0 is what
    stops the server; all of them well below it, with requests/s flat, means requests wait on something else."""

    role: str
    pid: int
    cores: float
    loop_busy: float


@dataclass(frozen=True)
class Row:
    """One front-end count in one round: cnnserve with it, and the bare server with as many processes."""

    frontends: int
    cnnserve: h2load.Measurement
    bare: BareMeasurement
    round: int = 0
    cnnserve_processes: tuple[ProcessLoad, ...] = ()

    @property
    def processes(self) -> int:
        """The bare server's process count: one for 0 (a single process) and for 1."""
        return max(1, self.frontends)

    @property
    def ratio(self) -> float:
        """cnnserve's requests/s over the bare server's."""
        return self.cnnserve.requests_per_second / self.bare.measurement.requests_per_second


@dataclass(frozen=True)
class Summary:
    """One front-end count over every round: the medians of its figures."""

    frontends: int
    processes: int
    cnnserve: float
    """cnnserve's requests/s."""
    average_batch: float | None
    bare: float
    """The bare server's requests/s."""
    ratio: float
    """cnnserve / bare, taken within each round."""
    relative_to_single_process: float | None
    """cnnserve / the single-process cnnserve, taken within each round; None when 0 was not run."""


@dataclass(frozen=True)
class Sweep:
    """Every front-end count of every round, in the order measured, all at the same load."""

    in_flight: int
    connections: int
    seconds: float
    rows: tuple[Row, ...]
    threads: int = 1
    """h2load's threads."""
    server_flags: tuple[str, ...] = ()
    """What cnnserve ran with beyond its defaults and `--frontends`."""

    @property
    def rounds(self) -> int:
        return len({row.round for row in self.rows})

    @property
    def frontend_counts(self) -> list[int]:
        """The front-end counts measured, in the first round's order."""
        return list(dict.fromkeys(row.frontends for row in self.rows))

    def relative_to_single_process(self, row: Row) -> float | None:
        """`row`'s cnnserve requests/s over the single-process (0 front-ends) cnnserve's of the same round; None
        when 0 was not run."""
        single = next((other for other in self.rows if other.frontends == 0 and other.round == row.round), None)
        if single is None:
            return None
        return row.cnnserve.requests_per_second / single.cnnserve.requests_per_second

    def summary(self, frontends: int) -> Summary:
        """The medians over the rounds of front-end count `frontends`."""
        rows = [row for row in self.rows if row.frontends == frontends]
        relative = [ratio for row in rows if (ratio := self.relative_to_single_process(row)) is not None]
        batches = [row.cnnserve.average_batch for row in rows if row.cnnserve.average_batch is not None]
        return Summary(
            frontends=frontends,
            processes=rows[0].processes,
            cnnserve=statistics.median(row.cnnserve.requests_per_second for row in rows),
            average_batch=statistics.median(batches) if batches else None,
            bare=statistics.median(row.bare.measurement.requests_per_second for row in rows),
            ratio=statistics.median(row.ratio for row in rows),
            relative_to_single_process=statistics.median(relative) if relative else None,
        )

    def to_dict(self) -> dict:
        rows = []
        for row in self.rows:
            bare = row.bare.measurement
            rows.append(
                {
                    "round": row.round,
                    "frontends": row.frontends,
                    "bare_processes": row.processes,
                    "cnnserve": {**asdict(row.cnnserve), "requests_per_second": row.cnnserve.requests_per_second},
                    "bare_grpc_aio": {
                        **asdict(bare),
                        "requests_per_second": bare.requests_per_second,
                        "per_process_successes": list(row.bare.per_process),
                    },
                    "cnnserve_processes": [asdict(load) for load in row.cnnserve_processes],
                    "ratio": row.ratio,
                    "relative_to_single_process": self.relative_to_single_process(row),
                }
            )
        return {
            "model": MODEL,
            "in_flight": self.in_flight,
            "connections": self.connections,
            "h2load_threads": self.threads,
            "server_flags": list(self.server_flags),
            "seconds": self.seconds,
            "rounds": self.rounds,
            "rows": rows,
            "medians": [asdict(self.summary(count)) for count in self.frontend_counts],
        }


@contextmanager
def running_bare_server(
    log_path: Path, processes: int = 1, ready_timeout: float = 30.0, flags: Sequence[str] = ()
) -> Iterator[BareServer]:
    """Start load_tests.bench.bare_grpc with `processes` processes (and its `flags`), yield where it listens, then
    stop it."""
    with tempfile.TemporaryDirectory(prefix="cnnserve-bare-") as scratch:
        port_file = Path(scratch) / "ports.json"
        command = [sys.executable, str(BARE_SERVER), "--port-file", str(port_file), *flags]
        with log_path.open("wb") as log:
            process = subprocess.Popen([*command, "--processes", str(processes)], stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + ready_timeout
            while not port_file.exists():
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"the bare server did not start; its log:\n{log_path.read_text()[-2000:]}")
                time.sleep(0.05)
            ports = json.loads(port_file.read_text())
            yield BareServer(
                f"{launcher.LOOPBACK}:{ports['grpc_port']}",
                tuple(f"{launcher.LOOPBACK}:{port}" for port in ports["stats_ports"]),
                process.pid,
            )
        finally:
            process.terminate()
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def measure_bare(
    server: BareServer, body: bytes, seconds: float, in_flight: int, connections: int, threads: int = 1
) -> BareMeasurement:
    """h2load against the bare server's shared port, and the successes each process counted over it.

    `in_flight` is split over `connections` connections (it must be a multiple of it), driven by `threads`.
    """
    if in_flight % connections:
        raise ValueError(f"in_flight {in_flight} is not a multiple of connections {connections}")
    before = [h2load.success_count(target, MODEL) for target in server.stats_targets]
    url = f"http://{server.target}{h2load.MODEL_INFER_PATH}"
    summary = h2load.run_h2load(url, body, seconds, connections, in_flight // connections, threads)
    after = [h2load.success_count(target, MODEL) for target in server.stats_targets]
    per_process = tuple(end - start for start, end in zip(before, after, strict=True))
    return BareMeasurement(h2load.Measurement(summary, sum(per_process)), per_process)


def sweep(
    repository: Path,
    workdir: Path,
    frontends: Sequence[int],
    seconds: float,
    in_flight: int,
    connections: int,
    rounds: int = 1,
    on_row: Callable[[Row], object] | None = None,
    threads: int = 1,
    server_flags: Sequence[str] = (),
    profile_dir: Path | None = None,
) -> Sweep:
    """For each front-end count, measure cnnserve (default settings and `server_flags`, and `--frontends N`: 0 is
    one process whatever auto would choose) and then the bare server with as many processes, each for `seconds`
    after a one-second warm-up at the same load, h2load running `threads` threads; `rounds` times, every other
    round in reverse order. `on_row` hears of each row once measured (progress). With `profile_dir`, py-spy
    samples every cnnserve process into `cnnserve-N-roundR.txt` there, with a `.summary.txt` of it
    (load_tests.bench.profiling), over one more window of `seconds` at the same load right after the measured one:
    the figures are never taken while py-spy reads the processes' memory.

    Raises h2load.H2loadMissing, launcher.ServerStartError, RuntimeError.
    """
    h2load.h2load_executable()
    if profile_dir is not None:
        profile_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for round_index in range(rounds):
        for count in frontends if round_index % 2 == 0 else list(reversed(frontends)):
            flags = (*server_flags, "--frontends", str(count))
            profile = None if profile_dir is None else profile_dir / f"cnnserve-{count}-round{round_index + 1}.txt"
            with launcher.running_server(repository, *flags, log_path=workdir / f"cnnserve-{count}.log") as server:
                body = h2load.infer_body(MODEL, h2load.input_name(server.target, MODEL))
                h2load.measure(server.target, MODEL, body, WARM_UP_SECONDS, in_flight, connections, threads)
                ours, loads = _measure_cnnserve(server, body, seconds, in_flight, connections, threads, profile)
            processes = max(1, count)
            with running_bare_server(workdir / f"bare_grpc-{processes}.log", processes) as bare_server:
                measure_bare(bare_server, body, WARM_UP_SECONDS, in_flight, connections, threads)
                bare = measure_bare(bare_server, body, seconds, in_flight, connections, threads)
            rows.append(Row(count, ours, bare, round_index, loads))
            if on_row is not None:
                on_row(rows[-1])
    return Sweep(in_flight, connections, seconds, tuple(rows), threads, tuple(server_flags))


def _measure_cnnserve(
    server: launcher.ServerProcess,
    body: bytes,
    seconds: float,
    in_flight: int,
    connections: int,
    threads: int,
    profile: Path | None,
) -> tuple[h2load.Measurement, tuple[ProcessLoad, ...]]:
    """One measured h2load run against cnnserve, with each of its processes' load over it; given `profile`, then
    py-spy's samples of them over a second run at the same load, not measured (and their summary beside)."""
    before, started = tree_cpu(server.pid), time.monotonic()
    measured = h2load.measure(server.target, MODEL, body, seconds, in_flight, connections, threads)
    after, elapsed = tree_cpu(server.pid), time.monotonic() - started
    roles = process_roles(server.pid, server.log(), after)
    if profile is not None:
        with profiling.sampled(server.pid, seconds, profile):
            h2load.measure(server.target, MODEL, body, seconds, in_flight, connections, threads)
        if profile.is_file():
            profile.with_suffix(".summary.txt").write_text(profiling.summarize(profile, roles))
    return measured, process_loads(roles, before, after, elapsed)


def process_roles(server_pid: int, log: str, pids: Iterable[int]) -> dict[int, str]:
    """What each of `pids` is in the server `server_pid`, from its log (the supervisor logs each child's pid as it
    starts it): "server" (one process), "supervisor", "engine", "front-end N", or "other" (a helper such as
    multiprocessing's resource tracker)."""
    named = {int(pid): "engine" for pid in re.findall(r"engine started \(pid (\d+)\)", log)}
    named |= {
        int(pid): f"front-end {index}" for index, pid in re.findall(r"front-end (\d+) started \(pid (\d+)\)", log)
    }
    top = "supervisor" if named else "server"
    return {pid: named.get(pid) or (top if pid == server_pid else "other") for pid in pids}


def process_loads(
    roles: dict[int, str], before: dict[int, ProcessCpu], after: dict[int, ProcessCpu], seconds: float
) -> tuple[ProcessLoad, ...]:
    """Each process's load between two tree_cpu readings taken `seconds` apart (`roles` from process_roles);
    busiest loop first."""
    loads = []
    for pid, end in after.items():
        start = before.get(pid)
        if start is None:
            continue
        role = roles.get(pid, "other")
        cores = (end.process - start.process) / seconds
        loads.append(ProcessLoad(role, pid, cores, (end.main_thread - start.main_thread) / seconds))
    return tuple(sorted(loads, key=lambda load: -load.loop_busy))


def row_report(row: Row, in_flight: int) -> str:
    """One measured row: each server's figures and their ratio."""
    names = _names(row)
    width = max(22, *(len(name) for name in names))
    lines = [f"round {row.round + 1}:"]
    for name, side in zip(names, (row.cnnserve, row.bare.measurement), strict=True):
        batch = "" if side.average_batch is None else f", average batch {side.average_batch:.1f}"
        lines.append(
            f"{name:<{width}} {side.requests_per_second:9.0f} requests/s  "
            f"(server successes {side.server_successes}, h2load succeeded {side.h2load.succeeded}, "
            f"failed {side.h2load.failed}, {side.h2load.seconds:.2f} s{batch})"
        )
    if row.processes > 1:
        lines.append(f"{'':<{width}} bare successes per process: {', '.join(map(str, row.bare.per_process))}")
    stages = row.cnnserve.stage_microseconds
    if stages:
        spent = ", ".join(f"{stage} {microseconds:,.0f}" for stage, microseconds in stages.items())
        lines.append(f"{'':<{width}} cnnserve per request, µs inside the server: {spent}")
    if row.cnnserve_processes:
        cores = sum(load.cores for load in row.cnnserve_processes)
        busiest = ", ".join(f"{load.role} {load.loop_busy:.2f}" for load in row.cnnserve_processes[:3])
        lines.append(f"{'':<{width}} cnnserve CPU {cores:.2f} cores; busiest event loops: {busiest}")
    lines.append(f"ratio cnnserve / bare: {row.ratio:.2f}  ({in_flight} in flight, {MODEL} single image)")
    return "\n".join(lines)


def report(result: Sweep) -> str:
    """A Markdown table of the whole sweep: per front-end count, the medians over its rounds."""
    rounds = result.rounds
    lines = [
        f"{MODEL} single image, {result.in_flight} in flight over {result.connections} connections"
        + (f" ({result.threads} h2load threads)" if result.threads > 1 else "")
        + ", "
        f"{result.seconds:g} s per server"
        + (f"; cnnserve with {shlex.join(result.server_flags)}" if result.server_flags else "")
        + (f"; medians of {rounds} rounds (ratios taken within each round)" if rounds > 1 else ""),
        "",
        "| front-ends | cnnserve (requests/s) | average batch | bare grpc.aio (requests/s) | bare processes "
        "| cnnserve / bare | cnnserve / single process |",
        "|---|---|---|---|---|---|---|",
    ]
    for count in result.frontend_counts:
        summary = result.summary(count)
        relative = summary.relative_to_single_process
        batch = summary.average_batch
        lines.append(
            f"| {count if count else '0 (single process)'} | {summary.cnnserve:,.0f} "
            f"| {'-' if batch is None else f'{batch:.1f}'} | {summary.bare:,.0f} | {summary.processes} "
            f"| {summary.ratio:.2f} | {'-' if relative is None else f'{relative:.2f}'} |"
        )
    return "\n".join(lines)


def plot(result: Sweep, path: Path) -> Path:
    """A PNG bar chart: requests/s against front-ends, cnnserve and the bare server side by side."""
    from load_tests.bench.plots import pyplot

    plt = pyplot()
    summaries = [result.summary(count) for count in result.frontend_counts]
    figure, ax = plt.subplots(figsize=(max(5.0, 1.4 * len(summaries) + 2.5), 4.5))
    positions = range(len(summaries))
    bar_width = 0.38
    ours = [summary.cnnserve for summary in summaries]
    bare = [summary.bare for summary in summaries]
    sides = (("cnnserve", "tab:blue", ours), ("bare grpc.aio, as many processes", "tab:gray", bare))
    for offset, (label, color, values) in zip((-bar_width / 2, bar_width / 2), sides, strict=True):
        bars = ax.bar([p + offset for p in positions], values, bar_width, label=label, color=color)
        ax.bar_label(bars, labels=[f"{value:,.0f}" for value in values], fontsize=8)
    ax.set_ylim(0, 1.25 * max(*ours, *bare))
    ax.set_xticks(list(positions), [str(summary.frontends) for summary in summaries])
    ax.set_xlabel("cnnserve front-ends (0: a single process); bare grpc.aio: max(1, N) processes")
    ax.set_ylabel("requests/s" + (f" (median of {result.rounds} rounds)" if result.rounds > 1 else ""))
    ax.set_title(f"{MODEL} single image, {result.in_flight} in flight, h2load, {result.seconds:g} s each")
    ax.legend(loc="upper left")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def _names(row: Row) -> tuple[str, str]:
    if row.frontends == 0:
        return "cnnserve (1 process)", "bare grpc.aio"
    if row.frontends == 1:
        return "cnnserve (1 front-end)", "bare grpc.aio (1 process)"
    return f"cnnserve ({row.frontends} front-ends)", f"bare grpc.aio ({row.processes} processes)"


def frontend_counts(text: str) -> list[int]:
    try:
        counts = [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a comma-separated list of integers: {text!r}") from None
    if any(count < 0 for count in counts) or len(set(counts)) != len(counts):
        raise argparse.ArgumentTypeError(f"front-end counts must be distinct and at least 0: {text!r}")
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m load_tests.bench.h2load_compare", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "--frontends",
        type=frontend_counts,
        default=[0],
        help="comma-separated cnnserve front-end counts to measure, 0 for a single process (default 0)",
    )
    add_model_options(parser, MODEL)
    parser.add_argument("--duration", type=float, default=10.0, help="measured seconds per server (default 10)")
    parser.add_argument(
        "--rounds", type=int, default=1, help="run the sweep this many times, alternating its order (default 1)"
    )
    parser.add_argument("--in-flight", type=int, default=64, help="calls in flight (default 64)")
    parser.add_argument(
        "--connections", type=int, help="HTTP/2 connections (default 4, or 16 when a server runs several processes)"
    )
    parser.add_argument(
        "--h2load-threads", type=int, default=1, help="h2load's threads (default 1; a many-core host wants more)"
    )
    parser.add_argument(
        "--profile-dir",
        type=Path,
        help="sample every cnnserve process with py-spy over one more run after each measured one, into this folder",
    )
    parser.add_argument(
        "--server-flags",
        type=shlex.split,
        default=[],
        help='more `cnnserve serve` flags for every cnnserve run, in one string: --server-flags="--max-batch-size 8"',
    )
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--plot", type=Path, help="also draw requests/s against front-ends here (PNG)")
    args = parser.parse_args(argv)
    connections = args.connections if args.connections is not None else 16 if max(args.frontends) > 1 else 4
    if args.rounds < 1:
        parser.error(f"--rounds must be at least 1, not {args.rounds}")
    if args.h2load_threads < 1:
        parser.error(f"--h2load-threads must be at least 1, not {args.h2load_threads}")
    if connections <= 0 or args.in_flight <= 0 or args.in_flight % connections:
        parser.error(f"--in-flight {args.in_flight} must be a positive multiple of {connections} connections")
    if h2load.said_missing():
        return 2
    model = model_from_options(MODEL, args)
    with tempfile.TemporaryDirectory(prefix="cnnserve-h2load-compare-") as scratch:
        workdir = Path(scratch)
        repository = single_model_repository(model, workdir / "repository")
        try:
            result = sweep(
                repository,
                workdir,
                args.frontends,
                args.duration,
                args.in_flight,
                connections,
                args.rounds,
                on_row=lambda row: print(row_report(row, args.in_flight), flush=True),
                threads=args.h2load_threads,
                server_flags=args.server_flags,
                profile_dir=args.profile_dir,
            )
        except (launcher.ServerStartError, RuntimeError) as exc:
            print(exc, file=sys.stderr)
            return 1
    print()
    print(report(result))
    if args.json is not None:
        args.json.write_text(json.dumps(result.to_dict(), indent=2))
    if args.plot is not None:
        print(f"plot: {plot(result, args.plot)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
