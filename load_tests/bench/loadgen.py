"""A closed-loop gRPC load generator spread over several processes.

One Python process cannot keep a fast server busy: the gRPC client's own per-call work is about as large as the
server's. So the callers of a point are spread over worker processes started once (spawned, so they hold no
copy of the parent's ONNX Runtime threads), each with its own event loop and its own connections. The request
is serialised once by the parent and sent as bytes, and responses are not parsed: the workers only call and time.

Timing is coordinated on the system-wide monotonic clock: every worker starts its callers at `start_at`, counts
only calls that finish inside `[window_start, window_end]`, and cancels what is still in flight at `window_end`.
The parent reads CPU times at the window's edges meanwhile, so CPU and calls cover the same interval.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import time
from array import array
from collections import Counter
from dataclasses import dataclass, field
from multiprocessing.connection import Connection

import numpy as np

CALLERS_PER_CONNECTION = 32
"""Callers sharing one HTTP/2 connection; more connections spread the work over the server's polling."""
_ERROR_BACKOFF_SECONDS = 0.001
"""A caller whose call failed waits this long, so a server refusing everything is not hammered in a hot loop."""
_STARTUP_SECONDS = 5.0


@dataclass(frozen=True)
class LoadPlan:
    """What every caller does during one measurement: call `method` on `target` with `request`, back to back."""

    target: str
    method: str
    """Full method path, e.g. /cnnserve.v1.ImageClassifier/Classify."""
    request: bytes
    """The serialised request message, sent as is by every call."""
    start_at: float
    """time.monotonic() at which callers start (warm-up begins)."""
    window_start: float
    window_end: float
    timeout_seconds: float = 30.0
    max_message_bytes: int = 64 * 1024 * 1024
    connections_per_process: int = 1
    """The fewest HTTP/2 connections each worker opens (it opens more for over 32 callers, never more than its
    callers). A server of several processes sharing one port (SO_REUSEPORT) gets each connection in one of
    them, so a few connections can leave some of its processes without work."""


@dataclass
class LoadResult:
    """The calls that finished inside the window, from every worker."""

    latencies: np.ndarray
    """Seconds, one per successful call."""
    errors: Counter[str] = field(default_factory=Counter)
    """gRPC status name -> failed calls."""


class LoadGenerator:
    """Worker processes waiting for plans; use as a context manager, `run` one plan at a time."""

    def __init__(self, processes: int) -> None:
        if processes < 1:
            raise ValueError(f"the load generator needs at least one process, got {processes}")
        self.processes = processes
        self._workers: list[tuple[multiprocessing.process.BaseProcess, Connection]] = []

    def __enter__(self) -> LoadGenerator:
        context = multiprocessing.get_context("spawn")
        for index in range(self.processes):
            parent_end, child_end = context.Pipe()
            process = context.Process(target=_worker_main, args=(child_end,), name=f"cnnserve-loadgen-{index}")
            process.daemon = True
            process.start()
            child_end.close()
            self._workers.append((process, parent_end))
        for process, connection in self._workers:
            try:
                started = connection.poll(_STARTUP_SECONDS * 4) and connection.recv() == "ready"
            except EOFError:
                started = False
            if not started:
                self.__exit__(None, None, None)
                raise RuntimeError(
                    f"load generator process {process.name} did not start (spawned processes re-import the main "
                    "module: a script must start the generator under `if __name__ == '__main__':`)"
                )
        return self

    def __exit__(self, *exc_info: object) -> None:
        for _process, connection in self._workers:
            with contextlib.suppress(OSError):
                connection.send(None)
        for process, connection in self._workers:
            process.join(timeout=5)
            if process.is_alive():
                process.kill()
                process.join()
            connection.close()
        self._workers.clear()

    @property
    def pids(self) -> list[int]:
        return [process.pid for process, _ in self._workers if process.pid is not None]

    def start(self, plan: LoadPlan, callers: int) -> RunningLoad:
        """Hand `callers` closed-loop callers, spread evenly over the processes, the plan; returns at once."""
        if callers < 1:
            raise ValueError(f"callers must be at least 1, got {callers}")
        busy = []
        for index, (_process, connection) in enumerate(self._workers):
            share = callers // self.processes + (1 if index < callers % self.processes else 0)
            if share:
                connection.send((plan, share))
                busy.append(connection)
        return RunningLoad(busy, plan)


class RunningLoad:
    """A plan being run; `wait` for its result once the window has passed."""

    def __init__(self, connections: list[Connection], plan: LoadPlan) -> None:
        self._connections = connections
        self._plan = plan

    def wait(self) -> LoadResult:
        """Block until every worker reports; raises RuntimeError with the worker's error if one failed."""
        latencies: list[np.ndarray] = []
        errors: Counter[str] = Counter()
        for connection in self._connections:
            remaining = self._plan.window_end - time.monotonic() + _STARTUP_SECONDS + 30
            try:
                report = connection.recv() if connection.poll(max(remaining, 1.0)) else None
            except EOFError:
                report = None
            if report is None:
                raise RuntimeError("a load generator process died or did not report back")
            if isinstance(report, str):
                raise RuntimeError(f"load generator process failed: {report}")
            worker_latencies, worker_errors = report
            latencies.append(np.frombuffer(worker_latencies, dtype=np.float64))
            errors.update(worker_errors)
        return LoadResult(np.concatenate(latencies) if latencies else np.empty(0), errors)


def _worker_main(connection: Connection) -> None:
    """A worker process: run each plan it receives and send back (latency bytes, error counts)."""
    connection.send("ready")
    while True:
        try:
            message = connection.recv()
        except EOFError:
            return
        if message is None:
            return
        plan, callers = message
        try:
            latencies, errors = asyncio.run(_run_plan(plan, callers))
        except Exception as exc:
            connection.send(f"{type(exc).__name__}: {exc}")
            continue
        connection.send((latencies.tobytes(), dict(errors)))


async def _run_plan(plan: LoadPlan, callers: int) -> tuple[array, Counter[str]]:
    import grpc

    options = [
        ("grpc.use_local_subchannel_pool", 1),
        ("grpc.max_receive_message_length", plan.max_message_bytes),
        ("grpc.max_send_message_length", plan.max_message_bytes),
    ]
    connections = min(callers, max(plan.connections_per_process, -(-callers // CALLERS_PER_CONNECTION)))
    channels = [grpc.aio.insecure_channel(plan.target, options=options) for _ in range(connections)]
    latencies = array("d")
    errors: Counter[str] = Counter()
    try:
        await asyncio.wait_for(asyncio.gather(*(c.channel_ready() for c in channels)), _STARTUP_SECONDS)
        calls = [channel.unary_unary(plan.method) for channel in channels]
        await asyncio.sleep(max(0.0, plan.start_at - time.monotonic()))

        async def caller(call: grpc.aio.UnaryUnaryMultiCallable) -> None:
            while (started := time.monotonic()) < plan.window_end:
                try:
                    await call(plan.request, timeout=plan.timeout_seconds)
                except grpc.aio.AioRpcError as exc:
                    if plan.window_start <= time.monotonic() <= plan.window_end:
                        errors[exc.code().name] += 1
                    await asyncio.sleep(_ERROR_BACKOFF_SECONDS)
                    continue
                finished = time.monotonic()
                if plan.window_start <= finished <= plan.window_end:
                    latencies.append(finished - started)

        tasks = [asyncio.create_task(caller(calls[i % len(calls)])) for i in range(callers)]
        _done, pending = await asyncio.wait(tasks, timeout=max(0.0, plan.window_end - time.monotonic()))
        for task in pending:
            task.cancel()
        outcomes = await asyncio.gather(*tasks, return_exceptions=True)
        failures = [o for o in outcomes if isinstance(o, Exception) and not isinstance(o, asyncio.CancelledError)]
        if failures:
            raise failures[0]
    finally:
        await asyncio.gather(*(channel.close() for channel in channels))
    return latencies, errors
