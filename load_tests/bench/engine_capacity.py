"""How many requests one engine answers: the ceiling of a multi-process server, whatever its cores.

    python -m load_tests.bench.engine_capacity [--feeders 1] [--in-flight 64] [--duration 8] [--rounds 3]
        [--model-repository R] [--json PATH]

With `cnnserve serve --frontends N`, every request of every front-end passes through the one engine process's
event loop. Front-ends scale with cores; that loop does not. So on a host with cores to spare for the front-ends,
the engine's work per request is what bounds the server, and this machine (2 cores, where the front-ends and the
load generator take most of the CPU) cannot show it through gRPC.

This benchmark measures it directly. Each round starts an engine as the supervisor does (same entry point, same
settings) and `--feeders` processes that stand in for front-ends without gRPC: each connects with `EngineClient`
and serves from `RemoteRepository`, the front-end's own code, and keeps `--in-flight` single-image mnist_net
requests waiting on the engine, sending each request's statistics after it as a front-end does. Over
`--duration` seconds it counts the answers and reads the engine's CPU time:

- answers/s: what the engine delivered;
- engine CPU per answer: its whole process (event loop, inference threads) over the answers;
- engine loop busy: the CPU time of the engine's main thread (its event loop, and the batches it runs inline)
  over the wall time. Near 1.0 the loop is the bound and answers/s is its capacity; below, the inference threads
  or the feeders are;
- loop CPU per answer, and the loop's ceiling (one core's second over it): the answers/s at which the engine's
  loop would be busy all the time. When the inference threads bound this machine (they share its cores), the
  ceiling says where a host with cores and a GPU to spare would stop instead;
- the average batch, from the engine's own counts.

Progress is printed per round; then a Markdown table of medians.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from load_tests.bench._cpu import process_cpu_seconds, thread_cpu_seconds
from load_tests.bench.h2load_compare import MODEL
from load_tests.bench.models import add_model_options, model_from_options, single_model_repository

_START_MARGIN_SECONDS = 1.0
"""Every feeder is connected and warmed up before the measured window opens, this long after the parent says go."""


@dataclass(frozen=True)
class Round:
    """One engine, fed for one window."""

    round: int
    feeders: int
    in_flight: int
    one_per_message: bool
    answers_per_second: float
    engine_cpu_us_per_answer: float
    engine_loop_busy: float
    """The engine main thread's CPU seconds over the window's wall seconds."""
    engine_loop_us_per_answer: float
    """The engine main thread's CPU per answer: what bounds the engine once inference runs elsewhere."""
    feeder_cpu_us_per_answer: float
    average_batch: float
    failures: int


@dataclass(frozen=True)
class _Fed:
    answers: int
    failures: int
    cpu_seconds: float


def _feed(
    run_dir: str, repository: str, in_flight: int, one_per_message: bool, opens: float, closes: float, results
) -> None:
    """A feeder process: `in_flight` callers sending single images through `EngineClient` until `closes` (on
    time.monotonic()), counting the answers that arrive between `opens` and `closes`. With `one_per_message`,
    caller i waits i turns of the event loop before each next request, so that each leaves in a message of its
    own, as a front-end's do (gRPC hands it its calls one at a time); else the callers an answer message woke
    send their next requests together in one."""
    from cnnserve.server.engine_client import EngineClient, RemoteRepository
    from cnnserve.server.engine_protocol import ENDPOINT_FILE
    from cnnserve.server.settings import ServerSettings
    from cnnserve.server.statistics import start_request_statistics

    async def main() -> _Fed:
        client = EngineClient(Path(run_dir) / ENDPOINT_FILE, 64 * 1024 * 1024)
        served = RemoteRepository(ServerSettings(model_repository=Path(repository)), client)
        await client.connect()
        await served.load_all()
        model = served.get(MODEL, None)
        image = np.random.default_rng(0).random((1, *model.preprocessor.input_shape), dtype=np.float32)
        answers = failures = 0
        cpu_at_open = 0.0

        async def caller(index: int) -> None:
            """One caller, doing per request what a front-end does with the engine: the inference, then the
            request's statistics, which go to the engine."""
            nonlocal answers, failures
            while (now := time.monotonic()) < closes:
                statistics = start_request_statistics()
                try:
                    await model.infer(image, now + 30.0)
                except Exception:
                    model.statistics.record_failure(time.monotonic() - now)
                    failures += 1
                    continue
                model.statistics.record_success(time.monotonic() - now, statistics)
                if opens <= time.monotonic() < closes:
                    answers += 1
                for _ in range(index if one_per_message else 0):
                    await asyncio.sleep(0)

        async def note_cpu_at_open() -> None:
            nonlocal cpu_at_open
            await asyncio.sleep(max(0.0, opens - time.monotonic()))
            cpu_at_open = time.process_time()

        await asyncio.gather(note_cpu_at_open(), *(caller(index) for index in range(in_flight)))
        fed = _Fed(answers, failures, time.process_time() - cpu_at_open)
        client.close()
        return fed

    try:
        results.put(asdict(asyncio.run(main())))
    except BaseException as exc:
        results.put({"error": f"{type(exc).__name__}: {exc}"})
        raise


def measure_round(
    repository: Path,
    feeders: int,
    in_flight: int,
    duration: float,
    round_index: int,
    log_path: Path,
    one_per_message: bool = False,
) -> Round:
    """Start an engine and `feeders` feeders, measure one window, stop them. Raises RuntimeError when the engine
    does not come up."""
    from cnnserve.server.engine import run_engine
    from cnnserve.server.settings import ServerSettings
    from cnnserve.server.supervisor import engine_settings

    context = multiprocessing.get_context("spawn")
    run_dir = Path(tempfile.mkdtemp(prefix="cnnserve-capacity-"))
    metrics_dir = run_dir / "metrics"
    metrics_dir.mkdir()
    saved_environment = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)
    ready_file = run_dir / "engine.json"
    settings = engine_settings(
        ServerSettings(model_repository=repository, grpc_port=0, metrics_port=0, frontends=feeders),
        feeders,
        ready_file,
    )
    engine = context.Process(target=run_engine, args=(settings, run_dir, metrics_dir, "WARNING"), daemon=True)
    feeder_processes = []
    try:
        with open(log_path, "a") as log, _redirected_stderr(log):
            engine.start()
        _wait_for_file(ready_file, engine, 120.0)
        results = context.Queue()
        opens = time.monotonic() + _START_MARGIN_SECONDS + 2.0
        closes = opens + duration
        for _ in range(feeders):
            process = context.Process(
                target=_feed,
                args=(str(run_dir), str(repository), in_flight, one_per_message, opens, closes, results),
                daemon=True,
            )
            process.start()
            feeder_processes.append(process)
        time.sleep(max(0.0, opens - time.monotonic()))
        engine_cpu, loop_cpu, wall = process_cpu_seconds(engine.pid), thread_cpu_seconds(engine.pid), time.monotonic()
        batches_before = _engine_batches(metrics_dir)
        time.sleep(max(0.0, closes - time.monotonic()))
        engine_cpu = process_cpu_seconds(engine.pid) - engine_cpu
        loop_cpu = thread_cpu_seconds(engine.pid) - loop_cpu
        wall = time.monotonic() - wall
        batches_after = _engine_batches(metrics_dir)
        fed = [_fed(results.get(timeout=60)) for _ in feeder_processes]
    finally:
        for process in feeder_processes:
            process.join(10)
            if process.is_alive():
                process.kill()
        if engine.is_alive():
            engine.terminate()
            engine.join(30)
        if saved_environment is None:
            os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)
        else:
            os.environ["PROMETHEUS_MULTIPROC_DIR"] = saved_environment
        shutil.rmtree(run_dir, ignore_errors=True)
    answers = sum(each.answers for each in fed)
    rows = batches_after[0] - batches_before[0]
    batches = batches_after[1] - batches_before[1]
    return Round(
        round=round_index,
        feeders=feeders,
        in_flight=in_flight,
        one_per_message=one_per_message,
        answers_per_second=answers / duration,
        engine_cpu_us_per_answer=1e6 * engine_cpu / max(answers, 1),
        engine_loop_busy=loop_cpu / wall,
        engine_loop_us_per_answer=1e6 * loop_cpu / max(answers, 1),
        feeder_cpu_us_per_answer=1e6 * sum(each.cpu_seconds for each in fed) / max(answers, 1),
        average_batch=rows / batches if batches else 0.0,
        failures=sum(each.failures for each in fed),
    )


def _fed(figures: dict) -> _Fed:
    if "error" in figures:
        raise RuntimeError(f"a feeder failed: {figures['error']}")
    return _Fed(**figures)


def _engine_batches(metrics_dir: Path) -> tuple[float, float]:
    """Rows and batches the engine has run so far, from its batch-size histogram (the multiprocess files)."""
    from prometheus_client import CollectorRegistry
    from prometheus_client.multiprocess import MultiProcessCollector

    registry = CollectorRegistry()
    MultiProcessCollector(registry, str(metrics_dir))
    rows = registry.get_sample_value("cnnserve_batch_size_sum", {"model": MODEL, "version": "1"}) or 0.0
    batches = registry.get_sample_value("cnnserve_batch_size_count", {"model": MODEL, "version": "1"}) or 0.0
    return rows, batches


class _redirected_stderr:
    """Children started inside inherit `log` as their standard error (ONNX Runtime's and the engine's logs)."""

    def __init__(self, log) -> None:
        self._log = log

    def __enter__(self) -> None:
        sys.stderr.flush()
        self._saved = os.dup(2)
        os.dup2(self._log.fileno(), 2)

    def __exit__(self, *_exc) -> None:
        os.dup2(self._saved, 2)
        os.close(self._saved)


def _wait_for_file(path: Path, process, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not (path.exists() and path.stat().st_size):
        if not process.is_alive():
            raise RuntimeError(f"the engine exited with code {process.exitcode} before loading its models")
        if time.monotonic() > deadline:
            raise RuntimeError(f"the engine did not load its models within {timeout:.0f} s")
        time.sleep(0.05)


def report(rounds: list[Round]) -> str:
    def median(field: str) -> float:
        return statistics.median(getattr(each, field) for each in rounds)

    first = rounds[0]
    loop_us = median("engine_loop_us_per_answer")
    return "\n".join(
        [
            f"{MODEL} single images, {first.feeders} feeder(s) x {first.in_flight} in flight, "
            f"{'one request per message' if first.one_per_message else 'requests sent together'}; "
            f"medians of {len(rounds)} round(s)",
            "",
            "| answers/s | engine CPU per answer | loop busy | loop CPU per answer | loop ceiling (answers/s) "
            "| feeders' CPU per answer | average batch |",
            "|---|---|---|---|---|---|---|",
            f"| {median('answers_per_second'):,.0f} | {median('engine_cpu_us_per_answer'):.0f} µs "
            f"| {median('engine_loop_busy'):.2f} | {loop_us:.0f} µs | {1e6 / loop_us:,.0f} "
            f"| {median('feeder_cpu_us_per_answer'):.0f} µs | {median('average_batch'):.1f} |",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m load_tests.bench.engine_capacity", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--feeders", type=int, default=1, help="processes standing in for front-ends (default 1)")
    parser.add_argument("--in-flight", type=int, default=64, help="requests each feeder keeps waiting (default 64)")
    parser.add_argument("--duration", type=float, default=8.0, help="seconds measured per round (default 8)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds, each with a fresh engine (default 3)")
    add_model_options(parser, MODEL)
    parser.add_argument("--json", type=Path, help="also write every round's figures here")
    parser.add_argument(
        "--one-per-message",
        action="store_true",
        help="send each request in a message of its own, as gRPC front-ends do (default: together when possible)",
    )
    args = parser.parse_args(argv)
    if args.feeders < 1 or args.in_flight < 1 or args.rounds < 1 or args.duration <= 0:
        parser.error("--feeders, --in-flight and --rounds must be at least 1, --duration above 0")
    model = model_from_options(MODEL, args)
    rounds = []
    with tempfile.TemporaryDirectory(prefix="cnnserve-capacity-") as scratch:
        workdir = Path(scratch)
        repository = single_model_repository(model, workdir / "repository")
        for index in range(args.rounds):
            try:
                measured = measure_round(
                    repository,
                    args.feeders,
                    args.in_flight,
                    args.duration,
                    index,
                    workdir / "engine.log",
                    args.one_per_message,
                )
            except RuntimeError as exc:
                print(f"{exc}; its log:\n{(workdir / 'engine.log').read_text()}", file=sys.stderr)
                return 1
            rounds.append(measured)
            print(
                f"round {index + 1}: {measured.answers_per_second:,.0f} answers/s, engine "
                f"{measured.engine_cpu_us_per_answer:.0f} µs CPU per answer, loop busy {measured.engine_loop_busy:.2f} "
                f"({measured.engine_loop_us_per_answer:.0f} µs per answer), "
                f"average batch {measured.average_batch:.1f}, failures {measured.failures}",
                flush=True,
            )
    print()
    print(report(rounds))
    if args.json is not None:
        args.json.write_text(json.dumps([asdict(each) for each in rounds], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
