"""The engine process of a multi-process server: every model's session and batcher, fed by the front-ends.

Front-end processes (server/frontend.py) do the protocol work and send each request's rows here through their
shared tensor arenas; requests from every front-end meet in one batcher per model version, so batches are as
large as a single-process server's and a GPU holds each model once. The engine also owns what must be one per
server: loading, hot reload and explicit load/unload, the model statistics (front-ends forward their requests'
figures), and the metrics port (/metrics sums every process's metrics; /v2/health/* answer for the engine).

Its loop never blocks on one front-end, and does as little as it can per request, because on a host with many
cores it is what bounds the whole server (load_tests/bench/engine_capacity.py measures it): a received `Submit`
of a plain request (a classification of at most one batch of rows: nearly all of them) is queued in its batcher
at once and answered with `Result` or `Failure` from its future's callback; the rest (explanations' background
rows, requests larger than a batch, which the batcher slices) go through a task that awaits the batcher. A
`Cancel` cancels that future or task, which drops the request from the queue if it has not run.
A front-end that dies closes its connection: the engine notices at once, cancels its requests and unmaps its
arena.

On SIGTERM the engine reports not ready at once, goes on serving while the front-ends drain, and exits once they
are gone (or after the drain timeout and a margin).
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import pickle
import signal
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cnnserve.server.engine_protocol import (
    CANCELLED,
    ENDPOINT_FILE,
    Cancel,
    Catalog,
    Control,
    ControlReply,
    CountsSent,
    Failure,
    Finished,
    Hello,
    Regions,
    Result,
    SendCounts,
    Submit,
    decode_to_engine,
    encode,
)
from cnnserve.server.errors import (
    CnnserveError,
    ExecutionProviderError,
    InferenceError,
    ModelNotFoundError,
    SharedMemoryRegionExistsError,
    UnavailableError,
    VersionRetiredError,
)
from cnnserve.server.heap import settle_heap
from cnnserve.server.http_port import serve_health_and_metrics
from cnnserve.server.launcher import write_port_file
from cnnserve.server.message_socket import MessageListener, MessageSocket
from cnnserve.server.metrics import ServerMetrics
from cnnserve.server.model import ModelVersion, RunInfo
from cnnserve.server.readiness import Readiness
from cnnserve.server.repository import ModelRepository
from cnnserve.server.runtime import quiet_onnxruntime
from cnnserve.server.settings import BatchingSettings, RuntimeSettings, ServerSettings
from cnnserve.server.shared_memory import SystemSharedMemory
from cnnserve.server.statistics import RequestStatistics, start_request_statistics
from cnnserve.server.tensor_arena import TensorArena

_log = logging.getLogger(__name__)
_STOP_MARGIN_SECONDS = 5.0
COUNTS_TIMEOUT_SECONDS = 1.0
"""How long a read of the statistics or the metrics waits for the front-ends' counts; a front-end too busy to
answer by then is read without its latest (a tenth of a second's) requests."""
QUEUE_BOARD_SLOTS = 4096
"""Model versions (name and number) whose queue depth the front-ends can read; later ones are refused by the
engine only, after decoding."""


@dataclass(frozen=True)
class VersionCard:
    """What a front-end needs to serve a model version: its state and its specification, without the session."""

    name: str
    version: int
    path: Path
    state: str
    reason: str
    provider: str
    fallback_reason: str
    load_seconds: float
    metadata: object
    spec: object
    batching: BatchingSettings | None
    runtime: RuntimeSettings | None
    run_info: RunInfo | None
    queue_slot: int
    """Where the queue board holds this version's queued rows; -1: nowhere (the engine still refuses)."""

    @classmethod
    def of(cls, version: ModelVersion, queue_slot: int) -> VersionCard:
        return cls(
            name=version.name,
            version=version.version,
            path=version.path,
            state=version.state.value,
            reason=version.reason,
            provider=version.provider,
            fallback_reason=version.fallback_reason,
            load_seconds=version.load_seconds,
            metadata=version.metadata,
            spec=version.spec,
            batching=version.batching,
            runtime=version.runtime,
            run_info=version.run_info,
            queue_slot=queue_slot,
        )


@dataclass(eq=False)
class _Frontend:
    channel: MessageSocket
    pid: int
    arena: TensorArena
    requests: dict[int, asyncio.Future] = field(default_factory=dict)
    """Each waiting request's future (a plain request's) or task (the rest's), by its id."""
    submitted: int = 0
    """Requests received from it so far (logged with the messages they came in when it leaves)."""
    counts_wanted: dict[int, asyncio.Future[None]] = field(default_factory=dict)
    """The `SendCounts` it has not answered yet, by id."""


async def _always() -> bool:
    """The engine's inline policy: its loop only feeds the batchers, so every quick batch may run on it at once
    (server/batcher.py). The requests that arrive meanwhile wait in the socket and form the next batch."""
    return True


class Engine:
    """Holds the repository and answers the front-ends connected to `run_dir`'s socket."""

    def __init__(self, settings: ServerSettings, run_dir: Path, metrics_dir: Path) -> None:
        self.settings = settings
        self.metrics = ServerMetrics()
        self.repository = ModelRepository(settings, self.metrics, inline_when=_always)
        self.metrics.watch_models(self.repository.versions)
        self.readiness = Readiness(self.repository, settings.required_models)
        self._metrics_dir = metrics_dir
        self._listener = MessageListener(run_dir / ENDPOINT_FILE, self._on_connection)
        self._frontends: dict[MessageSocket, _Frontend] = {}
        self._board = TensorArena.create(QUEUE_BOARD_SLOTS * 8)
        self._queue_depths = self._board.array(0, (QUEUE_BOARD_SLOTS,), np.int64)
        self._queue_slots: dict[tuple[str, int], int] = {}
        self._loaded = False
        self._tasks: set[asyncio.Task[None]] = set()
        self._counts_asked = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._outboxes: dict[MessageSocket, list[object]] = {}
        self._regions: dict[str, tuple[str, int, int]] = {}
        self._shared_memory = SystemSharedMemory()
        self.repository.on_change(self._publish_catalog)

    async def run(self, stop: asyncio.Event) -> None:
        """Serve until `stop` is set, then wait for the front-ends to leave and close every model."""
        quiet_onnxruntime()
        self._loop = asyncio.get_running_loop()
        self._listener.start()
        registry = self.metrics.all_processes_registry(self._metrics_dir)
        metrics_port = serve_health_and_metrics(
            self.settings.host,
            self.settings.metrics_port,
            registry,
            self.readiness,
            before_scrape=self.collect_counts_threadsafe,
        )
        _log.info("engine: metrics and REST health on http://%s:%d", self.settings.host, metrics_port)
        await self.repository.load_all()
        self._loaded = True
        self._publish_catalog()
        settle_heap(self.settings.gc_young_threshold)
        poller = None
        if self.settings.repository_poll_seconds > 0:
            poller = asyncio.create_task(self.repository.poll(self.settings.repository_poll_seconds))
        if self.settings.port_file is not None:
            write_port_file(self.settings.port_file, {"metrics_port": metrics_port, "pid": os.getpid()})
        await stop.wait()
        self.readiness.shutting_down()
        if poller is not None:
            poller.cancel()
        _log.info("engine: shutting down once the front-ends have drained")
        deadline = time.monotonic() + self.settings.drain_timeout_seconds + _STOP_MARGIN_SECONDS
        while self._frontends and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        await self.repository.close(drain_seconds=0)
        self._listener.close()
        for frontend in list(self._frontends.values()):
            self._forget(frontend)
        self._board.close()
        self._shared_memory.close()
        _log.info("engine: stopped")

    def _on_connection(self, sock: socket.socket) -> None:
        channel = MessageSocket(
            sock, lambda payload: self._on_message(channel, payload), lambda: self._on_disconnect(channel)
        )
        channel.start()

    def _on_message(self, channel: MessageSocket, payload: bytes) -> None:
        frontend = self._frontends.get(channel)
        for message in decode_to_engine(payload):
            if isinstance(message, Submit):
                if frontend is not None:
                    frontend.submitted += 1
                    self._admit(frontend, message)
            elif isinstance(message, Cancel):
                if frontend is not None and (task := frontend.requests.get(message.id)) is not None:
                    task.cancel()
            elif isinstance(message, Finished):
                self._count(message)
            elif isinstance(message, CountsSent):
                if frontend is not None:
                    self._counts_received(frontend, message.id)
            elif isinstance(message, Hello):
                self._welcome(channel, message)
                frontend = self._frontends.get(channel)
            elif isinstance(message, Control):
                self._spawn(self._control(channel, message))

    def _on_disconnect(self, channel: MessageSocket) -> None:
        """A front-end closed its connection: it stopped or died (the kernel closes a dead process's sockets)."""
        self._outboxes.pop(channel, None)
        frontend = self._frontends.get(channel)
        if frontend is None:
            return
        if frontend.requests:
            _log.warning("engine: front-end %d is gone; dropping its %d requests", frontend.pid, len(frontend.requests))
        else:
            _log.info("engine: front-end %d left", frontend.pid)
        self._forget(frontend)

    def _welcome(self, channel: MessageSocket, hello: Hello) -> None:
        try:
            arena = TensorArena.attach(hello.pid, hello.arena_descriptor, hello.arena_bytes)
        except OSError as exc:
            _log.error("engine: cannot map the tensor arena of front-end %d: %s", hello.pid, exc)
            return
        self._frontends[channel] = _Frontend(channel, hello.pid, arena)
        _log.info("engine: front-end %d connected", hello.pid)
        self._send(channel, self._catalog())
        self._send(channel, Regions(dict(self._regions)))

    def _admit(self, frontend: _Frontend, request: Submit) -> None:
        """Queue a request: a plain one straight in its batcher, answered from its future's callback; the rest
        through a task (see the module docstring)."""
        try:
            model = self._model_of(request)
            batching = model.batching
            if request.background or batching is None or request.shape[0] > batching.max_batch_size:
                frontend.requests[request.id] = asyncio.create_task(self._serve(frontend, request, model))
                return
            statistics = RequestStatistics()
            frontend.requests[request.id] = model.infer_nowait(
                self._inputs_of(frontend, request),
                request.deadline,
                request.priority,
                statistics,
                lambda future: self._answer(frontend, request, future, statistics),
                request.company,
            )
        except Exception as exc:
            self._reply(frontend, _failure(request, exc))

    def _answer(
        self, frontend: _Frontend, request: Submit, future: asyncio.Future[np.ndarray], statistics: RequestStatistics
    ) -> None:
        frontend.requests.pop(request.id, None)
        if self._frontends.get(frontend.channel) is not frontend:
            return
        try:
            reply = self._deliver(frontend, request, future.result(), statistics)
        except BaseException as exc:
            reply = _failure(request, exc)
        self._reply(frontend, reply)

    async def _serve(self, frontend: _Frontend, request: Submit, model: ModelVersion) -> None:
        """Run a request that is not plain through its model's batcher and answer it, whatever happens."""
        statistics = start_request_statistics()
        try:
            outputs = await model.infer(
                self._inputs_of(frontend, request),
                request.deadline,
                request.priority,
                background=request.background,
                raw=request.raw,
                output=request.output or None,
            )
            reply = self._deliver(frontend, request, outputs, statistics)
        except BaseException as exc:
            reply = _failure(request, exc)
        finally:
            frontend.requests.pop(request.id, None)
        self._reply(frontend, reply)

    def _model_of(self, request: Submit) -> ModelVersion:
        """The version a request names; VersionRetiredError when it no longer serves (the front-end chose it from
        a catalog that a reload has just changed, and chooses again)."""
        try:
            return self.repository.get(request.model, request.version)
        except (ModelNotFoundError, UnavailableError) as exc:
            raise VersionRetiredError(str(exc)) from exc

    def _deliver(
        self, frontend: _Frontend, request: Submit, outputs: np.ndarray, statistics: RequestStatistics
    ) -> Result:
        """Write a request's answer where its front-end waits for it; its `Result`."""
        rows = request.shape[0]
        outputs = outputs.reshape(rows, -1)
        if outputs.shape != (rows, request.output_width):
            raise InferenceError(
                f"model {request.model} answered shape {list(outputs.shape)}, expected [{rows}, {request.output_width}]"
            )
        frontend.arena.array(request.output_offset, (rows, request.output_width), np.float32)[...] = outputs
        return _result(request.id, statistics)

    def _reply(self, frontend: _Frontend, reply: Result | Failure) -> None:
        if self._frontends.get(frontend.channel) is frontend:
            self._send(frontend.channel, reply)

    def _inputs_of(self, frontend: _Frontend, request: Submit) -> np.ndarray:
        """The request's rows, where they lie: the front-end's arena, or the client's shared memory region."""
        if not request.region:
            return frontend.arena.array(request.offset, request.shape, request.dtype)
        dtype = np.dtype(request.dtype)
        nbytes = dtype.itemsize * math.prod(request.shape)
        view = self._shared_memory.get(request.region).view(request.offset, nbytes, "input")
        return np.frombuffer(view, dtype).reshape(request.shape)

    def _count(self, finished: Finished) -> None:
        version = self.repository.version(finished.model, finished.version)
        if version is None:
            return
        if finished.succeeded:
            figures = RequestStatistics(
                finished.compute_input,
                finished.queue,
                finished.compute_infer,
                finished.compute_output,
                finished.inferences,
            )
            version.statistics.record_success(finished.seconds, figures, finished.count)
        else:
            version.statistics.record_failure(finished.seconds, finished.count)

    async def _control(self, channel: MessageSocket, control: Control) -> None:
        payload = b""
        try:
            if control.operation == "load":
                await self.repository.load(control.argument)
            elif control.operation == "unload":
                await self.repository.unload(control.argument)
            elif control.operation == "register_region":
                name, key, offset, byte_size = json.loads(control.argument)
                if name in self._regions:
                    raise SharedMemoryRegionExistsError(
                        f"shared memory region '{name}' is already registered; unregister it first or use another name"
                    )
                self._regions[name] = (key, offset, byte_size)
                self._publish_regions()
            elif control.operation == "unregister_region":
                if control.argument:
                    self._regions.pop(control.argument, None)
                else:
                    self._regions.clear()
                self._publish_regions()
            elif control.operation == "statistics":
                await self.collect_counts()
                statistics = {(v.name, v.version): v.statistics for v in self.repository.versions()}
                payload = pickle.dumps(statistics)
            else:
                raise InferenceError(f"unknown engine operation {control.operation!r}")
        except CnnserveError as exc:
            self._send(channel, ControlReply(control.id, type(exc).__name__, str(exc)))
            return
        self._send(channel, ControlReply(control.id, "", "", payload))

    async def collect_counts(self) -> None:
        """Have every front-end send what it has counted but not sent yet (its finished requests' statistics,
        its metrics), and wait up to COUNTS_TIMEOUT_SECONDS for all of them: a read after this misses no request
        that was answered before it began."""
        self.metrics.flush()
        if not self._frontends:
            return
        self._counts_asked += 1
        asked = self._counts_asked
        loop = asyncio.get_running_loop()
        waits = []
        for channel, frontend in self._frontends.items():
            wanted = frontend.counts_wanted[asked] = loop.create_future()
            waits.append(wanted)
            self._send(channel, SendCounts(asked))
        await asyncio.wait(waits, timeout=COUNTS_TIMEOUT_SECONDS)
        for frontend in self._frontends.values():
            frontend.counts_wanted.pop(asked, None)

    @staticmethod
    def _counts_received(frontend: _Frontend, asked: int) -> None:
        wanted = frontend.counts_wanted.pop(asked, None)
        if wanted is not None and not wanted.done():
            wanted.set_result(None)

    def collect_counts_threadsafe(self) -> None:
        """`collect_counts` from another thread (the metrics port's, before a scrape)."""
        if self._loop is None or self._loop.is_closed():
            return
        try:
            done = asyncio.run_coroutine_threadsafe(self.collect_counts(), self._loop)
        except RuntimeError:  # the loop stopped meanwhile
            return
        done.result(timeout=COUNTS_TIMEOUT_SECONDS + 1.0)

    def _catalog(self) -> Catalog:
        cards = [VersionCard.of(version, self._queue_slot(version)) for version in self.repository.versions()]
        return Catalog(self._loaded, pickle.dumps(cards), os.getpid(), self._board.descriptor, self._board.size)

    def _queue_slot(self, version: ModelVersion) -> int:
        """The board slot of `version` (its batcher publishing its depth there from now on), or -1."""
        key = (version.name, version.version)
        slot = self._queue_slots.get(key)
        if slot is None and len(self._queue_slots) < QUEUE_BOARD_SLOTS:
            slot = self._queue_slots[key] = len(self._queue_slots)
        if slot is None or version.batcher is None:
            return -1
        version.batcher.publish_depth(self._queue_depths[slot : slot + 1])
        return slot

    def _publish_regions(self) -> None:
        self._shared_memory.adopt(dict(self._regions))
        for channel in self._frontends:
            self._send(channel, Regions(dict(self._regions)))

    def _publish_catalog(self) -> None:
        catalog = self._catalog()
        for channel in self._frontends:
            self._send(channel, catalog)

    def _send(self, channel: MessageSocket, message: object) -> None:
        """Queue `message` for a front-end; what one event-loop iteration queues leaves as one message."""
        if not self._outboxes:
            asyncio.get_running_loop().call_soon(self._flush)
        self._outboxes.setdefault(channel, []).append(message)

    def _flush(self) -> None:
        outboxes, self._outboxes = self._outboxes, {}
        for channel, messages in outboxes.items():
            channel.send(encode(messages))

    def _spawn(self, awaitable) -> None:
        task = asyncio.ensure_future(awaitable)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _forget(self, frontend: _Frontend) -> None:
        channel = frontend.channel
        _log.info(
            "engine: front-end %d sent %d requests in %d messages (%.2f a message) and got %d messages back",
            frontend.pid,
            frontend.submitted,
            channel.messages_received,
            frontend.submitted / max(1, channel.messages_received),
            channel.messages_sent,
        )
        self._frontends.pop(frontend.channel, None)
        for wanted in frontend.counts_wanted.values():
            if not wanted.done():
                wanted.set_result(None)
        frontend.channel.close()
        for task in list(frontend.requests.values()):
            task.cancel()
        frontend.arena.close()


def _failure(request: Submit, error: BaseException) -> Failure:
    """What the front-end hears of a request that failed, or that the engine dropped on its `Cancel`."""
    if isinstance(error, asyncio.CancelledError):
        return Failure(request.id, CANCELLED, "")
    if isinstance(error, CnnserveError):
        return Failure(request.id, type(error).__name__, str(error))
    if not isinstance(error, Exception):
        raise error
    _log.error("engine: request to %s failed", request.model, exc_info=error)
    return Failure(request.id, "InferenceError", f"{error.__class__.__name__}: {error}")


def _result(request_id: int, statistics: RequestStatistics) -> Result:
    return Result(
        request_id,
        statistics.queue,
        statistics.compute_input,
        statistics.compute_infer,
        statistics.compute_output,
        statistics.inferences,
    )


def run_engine(settings: ServerSettings, run_dir: Path, metrics_dir: Path, log_level: str) -> None:
    """The engine process's entry point (started by the supervisor). Exits 3 when CUDA was required and absent."""
    from cnnserve._logging import configure_logging
    from cnnserve.server.supervisor import die_with_parent

    die_with_parent()
    configure_logging(log_level, settings.log_format.value)
    settings.apply_to_interpreter()

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        loop.add_signal_handler(signal.SIGINT, lambda: None)
        await Engine(settings, run_dir, metrics_dir).run(stop)

    try:
        asyncio.run(main())
    except ExecutionProviderError as exc:
        _log.error("%s", exc)
        raise SystemExit(3) from exc
