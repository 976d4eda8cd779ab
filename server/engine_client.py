"""A front-end's side of the engine: the catalog it serves from and the one call that reaches a model.

`RemoteRepository` is the front-end's repository: the versions the engine's catalog lists, each a
`FrontendModelVersion` that preprocesses locally and infers through the engine. The data plane, the services and
readiness use it exactly as they use the engine's `ModelRepository`, so the request path is the same code in a
single-process server and in a front-end; only `infer` differs.

`EngineClient.infer` writes the request's rows into a block of this process's `TensorArena`, sends a `Submit`
and awaits the engine's answer; when the caller gives up (deadline, cancellation) it sends a `Cancel`, and the
block is freed only when the engine's one answer to that request arrives. When the engine is gone (its
connection closes, or the supervisor says so) every waiting request fails UNAVAILABLE at once, and so does every
later one.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import math
import os
import pickle
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np

from cnnserve.server.batcher import queue_full_error
from cnnserve.server.drain import CallGate
from cnnserve.server.engine_protocol import (
    CANCELLED,
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
    decode_to_frontend,
    encode,
)
from cnnserve.server.errors import InvalidInputError, QueueFullError, UnavailableError, error_named
from cnnserve.server.message_socket import MessageSocket
from cnnserve.server.metrics import COUNT_FLUSH_SECONDS
from cnnserve.server.model import ModelState, ModelVersion
from cnnserve.server.preprocess import ImagePreprocessor
from cnnserve.server.repository import ServedVersions
from cnnserve.server.settings import ServerSettings
from cnnserve.server.shared_memory import SystemSharedMemory
from cnnserve.server.statistics import ModelStatistics, RequestStatistics, current_request
from cnnserve.server.tensor_arena import ArenaFullError, TensorArena, aligned

_log = logging.getLogger(__name__)
_ENGINE_GONE = "the inference engine of this server stopped; retry (the server restarts or another replica answers)"


@dataclass
class _Pending:
    future: asyncio.Future[tuple[np.ndarray, Result]]
    offset: int
    output_offset: int
    rows: int
    width: int


class EngineClient:
    """The connection of one front-end process to the engine."""

    def __init__(self, endpoint: Path, arena_bytes: int) -> None:
        self._endpoint = endpoint
        self._arena = TensorArena.create(arena_bytes)
        self._channel: MessageSocket | None = None
        self._ids = itertools.count(1)
        self._pending: dict[int, _Pending] = {}
        self._controls: dict[int, asyncio.Future[bytes]] = {}
        self._outbox: list[object] = []
        self._finished: dict[tuple[str, int, bool], Finished] = {}
        """The requests answered since the last flush, summed per version and outcome."""
        self._flush_scheduled = False
        self._finished_timer: asyncio.TimerHandle | None = None
        self._counts_due = False
        """The next flush sends the finished requests' statistics too."""
        self._catalog_listeners: list[Any] = []
        self._region_listeners: list[Any] = []
        self._lost_listeners: list[Any] = []
        self._counts_listeners: list[Any] = []
        self._broken_listeners: list[Any] = []
        self._shared_memory: SystemSharedMemory | None = None
        self._calls: CallGate | None = None
        self.lost = False
        self.broken = False
        """This process failed to take in the engine's catalog or regions (`on_broken`)."""

    def on_catalog(self, listener: Any) -> None:
        self._catalog_listeners.append(listener)

    def on_regions(self, listener: Any) -> None:
        """Call `listener` with every region registered on any front-end, whenever that changes."""
        self._region_listeners.append(listener)

    def on_lost(self, listener: Any) -> None:
        """Call `listener` once the engine is gone."""
        self._lost_listeners.append(listener)

    def on_broken(self, listener: Any) -> None:
        """Call `listener` once if this process fails to take in the engine's catalog or regions.

        Such a front-end would serve from a view of the engine that is no longer true (or, at start, never
        become ready), so its server stops (`server/app.py`, `serve`) and exits 1: its supervisor starts a fresh
        one, which asks the engine for everything anew. The failure is a fault of this process (a bug, memory),
        not of a request; the engine and the other front-ends go on.
        """
        self._broken_listeners.append(listener)

    def on_counts_wanted(self, listener: Any) -> None:
        """Call `listener` when the engine is about to read every process's counts (this front-end's metrics
        must be written by then)."""
        self._counts_listeners.append(listener)

    def count_calls_with(self, calls: CallGate) -> None:
        """Tell the engine, with each request, whether more of this front-end's are on their way (`company`), so
        that its batcher waits for them (server/batcher.py, `_AdaptiveDelay`).

        They are when the front-end's call gate counts more calls running than this one and those already at the
        engine. When it does not, `CallGate.another_arrives` turns the loop a few times first, so that
        calls gRPC's transport already holds reach their handlers. Without both, a burst after a lone caller could
        reach the engine one request at a time, each after the last was answered, and run one call a batch
        (docs/benchmarks.md, "Bursts across a front-end"): 1-7 bursts of 100 did with mnist_net, and with xo's
        PNGs, whose decoding makes a front-end's work per call longer, 3 of 4 runs of the test had such a burst.
        """
        self._calls = calls

    def use_shared_memory(self, shared_memory: SystemSharedMemory) -> None:
        """Send inputs that lie in a client's registered region by reference: the engine maps the region too."""
        self._shared_memory = shared_memory
        self.on_regions(shared_memory.adopt)

    async def connect(self) -> None:
        """Connect (waiting for the engine to listen) and say hello; the engine answers with its catalog."""
        self._channel = await MessageSocket.connect(self._endpoint, self._on_message, self._connection_closed)
        self._send(Hello(os.getpid(), self._arena.descriptor, self._arena.size))

    async def infer(
        self,
        version: FrontendModelVersion,
        inputs: np.ndarray,
        deadline: float,
        priority: int,
        background: bool = False,
        raw: bool = False,
        output: str | None = None,
    ) -> np.ndarray:
        """The probabilities of `inputs` from the engine (one row each), or what `raw` or `output` ask for (see
        `ModelVersion.infer`); raises what the engine raised."""
        if self.lost:
            raise UnavailableError(_ENGINE_GONE)
        company = False
        if not background and self._calls is not None:
            # Background rows (explanations) queue in a lane of their own, where company changes nothing.
            company = self._calls.running > len(self._pending) + 1 or await self._calls.another_arrives()
            if self.lost:
                raise UnavailableError(_ENGINE_GONE)
        rows = len(inputs)
        shape: tuple[int, ...] = ()
        if output:
            shape = version.output_shape(output)
            width = math.prod(shape)
        else:
            width = version.raw_output_width if raw else version.output_width
        place = self._shared_memory.locate(inputs) if self._shared_memory is not None else None
        input_bytes = 0 if place is not None else aligned(inputs.nbytes)
        try:
            block = self._arena.allocate(input_bytes + rows * width * 4)
        except ArenaFullError as exc:
            raise QueueFullError(f"this front-end's tensor buffer is full ({exc}); retry with backoff") from exc
        output_offset = block + input_bytes
        if place is None:
            region, offset = "", block
            self._arena.array(offset, inputs.shape, inputs.dtype)[...] = inputs
        else:
            region, offset = place
        request_id = next(self._ids)
        future: asyncio.Future[tuple[np.ndarray, Result]] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = _Pending(future, block, output_offset, rows, width)
        self._send(
            Submit(
                request_id,
                version.name,
                version.version,
                offset,
                inputs.shape,
                inputs.dtype.str,
                output_offset,
                width,
                deadline,
                priority,
                region,
                background,
                raw,
                output or "",
                company,
            )
        )
        try:
            probabilities, result = await future
        except asyncio.CancelledError:
            if request_id in self._pending and not self.lost:
                self._send(Cancel(request_id))
            raise
        statistics = current_request()
        statistics.queue += result.queue
        statistics.compute_input += result.compute_input
        statistics.compute_infer += result.compute_infer
        statistics.compute_output += result.compute_output
        statistics.inferences += result.inferences
        return probabilities.reshape(rows, *shape) if output else probabilities

    def finished(
        self, version: ModelVersion, seconds: float, request: RequestStatistics | None, count: int = 1
    ) -> None:
        """Forward a finished request's statistics to the engine: its figures when it succeeded, None when not
        (or `count` requests', summed).

        The requests finished within COUNT_FLUSH_SECONDS go as one `Finished` per version and outcome, with their
        figures summed: the statistics are sums and counts, and the engine's loop, which every front-end's
        requests share, then does this work ten times a second instead of once per request. They go sooner
        ahead of what reads them: a control operation from this process, and its answer to the engine's
        `SendCounts`.
        """
        key = (version.name, version.version, request is not None)
        record = self._finished.get(key)
        if record is None:
            record = self._finished[key] = Finished(version.name, version.version, request is not None, count=0)
            if self._finished_timer is None:
                self._finished_timer = asyncio.get_running_loop().call_later(COUNT_FLUSH_SECONDS, self._send_counts)
        record.count += count
        record.seconds += seconds
        if request is not None:
            record.compute_input += request.compute_input
            record.queue += request.queue
            record.compute_infer += request.compute_infer
            record.compute_output += request.compute_output
            record.inferences += request.inferences

    async def control(self, operation: str, argument: str = "") -> bytes:
        """Run a control operation in the engine; raises the engine's error."""
        if self.lost:
            raise UnavailableError(_ENGINE_GONE)
        request_id = next(self._ids)
        future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._controls[request_id] = future
        self._send(Control(request_id, operation, argument), after_counts=True)
        try:
            return await future
        finally:
            self._controls.pop(request_id, None)

    def engine_lost(self) -> None:
        """The engine died: fail every waiting request now, and every later one at once."""
        if self.lost:
            return
        self.lost = True
        error = UnavailableError(_ENGINE_GONE)
        for pending in self._pending.values():
            if not pending.future.done():
                pending.future.set_exception(error)
        for future in self._controls.values():
            if not future.done():
                future.set_exception(error)
        for listener in self._lost_listeners:
            listener()

    def close(self) -> None:
        """Send what is still counted or queued, then close the connection."""
        if self._outbox or self._finished:
            self._send_counts()
        if self._channel is not None:
            self._channel.close()

    def _connection_closed(self) -> None:
        _log.error("the engine closed its connection; every request fails UNAVAILABLE until the server restarts")
        self.engine_lost()

    def _send(self, message: object, after_counts: bool = False) -> None:
        """Queue `message`; everything queued in one event-loop iteration leaves as one message, after the
        finished requests' statistics when `after_counts` (for a message that reads them, or says they were sent)."""
        self._outbox.append(message)
        self._counts_due |= after_counts
        self._schedule_flush()

    def _schedule_flush(self) -> None:
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _send_counts(self) -> None:
        self._counts_due = True
        self._flush()

    def _flush(self) -> None:
        self._flush_scheduled = False
        messages: list[object] = []
        if self._counts_due:
            self._counts_due = False
            if self._finished_timer is not None:
                self._finished_timer.cancel()
                self._finished_timer = None
            messages.extend(self._finished.values())
            self._finished = {}
        messages.extend(self._outbox)
        self._outbox = []
        if self._channel is not None and messages:
            self._channel.send(encode(messages))

    def _on_message(self, payload: bytes) -> None:
        for message in decode_to_frontend(payload):
            if isinstance(message, Result | Failure):
                self._answer(message)
            elif isinstance(message, Catalog):
                self._take_in(self._catalog_listeners, message, "catalog")
            elif isinstance(message, Regions):
                self._take_in(self._region_listeners, message.regions, "shared memory regions")
            elif isinstance(message, SendCounts):
                for listener in self._counts_listeners:
                    listener()
                self._send(CountsSent(message.id), after_counts=True)
            elif isinstance(message, ControlReply):
                future = self._controls.get(message.id)
                if future is not None and not future.done():
                    if message.error:
                        future.set_exception(error_named(message.error, message.message))
                    else:
                        future.set_result(message.payload)

    def _take_in(self, listeners: list[Any], state: object, what: str) -> None:
        """Hand the engine's `state` to each listener; a failure breaks this front-end (`on_broken`)."""
        if self.broken:
            return
        try:
            for listener in listeners:
                listener(state)
        except Exception:
            _log.exception("this front-end could not take in the engine's %s; it stops, to be started afresh", what)
            self.broken = True
            for listener in self._broken_listeners:
                listener()

    def _answer(self, message: Result | Failure) -> None:
        pending = self._pending.pop(message.id, None)
        if pending is None:
            return
        try:
            if pending.future.done():
                return
            if isinstance(message, Result):
                output = self._arena.array(pending.output_offset, (pending.rows, pending.width), np.float32)
                pending.future.set_result((output.copy(), message))
            elif message.error != CANCELLED:
                pending.future.set_exception(error_named(message.error, message.message))
            else:
                pending.future.set_exception(UnavailableError("the engine dropped the request; retry"))
        finally:
            self._arena.free(pending.offset)


class ForwardedStatistics(ModelStatistics):
    """A front-end's view of a version's statistics: what it counts goes to the engine, which counts for every
    front-end; what it reads was fetched from the engine just before (`RemoteRepository.refresh_statistics`)."""

    def __init__(self, engine: EngineClient, version: ModelVersion) -> None:
        super().__init__()
        self._engine = engine
        self._version = version

    def record_success(self, seconds: float, request: RequestStatistics, count: int = 1) -> None:
        self._engine.finished(self._version, seconds, request, count)

    def record_failure(self, seconds: float, count: int = 1) -> None:
        self._engine.finished(self._version, seconds, None, count)

    def update_from(self, snapshot: ModelStatistics) -> None:
        for each in fields(ModelStatistics):
            setattr(self, each.name, getattr(snapshot, each.name))


@dataclass(eq=False)
class FrontendModelVersion(ModelVersion):
    """A version as a front-end serves it: specification and preprocessing here, session and batcher in the
    engine."""

    engine: EngineClient | None = None
    output_width: int = 0
    """Probabilities per row: one per label (a single sigmoid output answers two)."""
    queue_depth: np.ndarray | None = None
    """This version's cell of the engine's queue board: the rows queued in its batcher right now."""

    def refuse_if_full(self, rows: int) -> None:
        if self.queue_depth is None or self.batching is None:
            return
        queued = int(self.queue_depth[0])
        if queued + rows > self.batching.max_queue_size:
            raise queue_full_error(self.name, queued, self.batching.max_queue_size, rows)

    @property
    def raw_output_width(self) -> int:
        return self.metadata.output_width if self.metadata is not None else 0

    def output_shape(self, output: str) -> tuple[int, ...]:
        """One row's shape of the activation output `output`, as the metadata records it."""
        assert self.metadata is not None
        for activation in self.metadata.activations:
            if activation.output == output:
                return tuple(activation.shape)
        raise InvalidInputError(f"model {self.name} has no graph output {output!r}")

    async def infer(
        self,
        inputs: np.ndarray,
        deadline: float,
        priority: int = 0,
        *,
        background: bool = False,
        raw: bool = False,
        output: str | None = None,
    ) -> np.ndarray:
        if self.state is not ModelState.READY or self.engine is None:
            raise UnavailableError(f"model {self.name} version {self.version} is {self.state.value}, not READY")
        return await self.engine.infer(self, inputs, deadline, priority, background, raw, output)


class RemoteRepository(ServedVersions):
    """The versions the engine serves, as its latest catalog lists them."""

    def __init__(self, settings: ServerSettings, engine: EngineClient) -> None:
        super().__init__(settings)
        self._engine = engine
        self._loaded = asyncio.Event()
        self._queue_board: np.ndarray | None = None
        engine.on_catalog(self._apply)
        engine.on_lost(self._engine_gone)

    async def load_all(self) -> None:
        """Return once the engine has loaded every model of the repository once."""
        await self._loaded.wait()

    async def load(self, name: str) -> None:
        await self._engine.control("load", name)

    async def unload(self, name: str) -> None:
        await self._engine.control("unload", name)

    async def close(self, drain_seconds: float) -> None:
        """Nothing to close here: the engine drains its own batchers."""

    async def region_registered(self, name: str, key: str, offset: int, byte_size: int) -> None:
        await self._engine.control("register_region", json.dumps([name, key, offset, byte_size]))

    async def region_unregistered(self, name: str) -> None:
        await self._engine.control("unregister_region", name)

    async def refresh_statistics(self) -> None:
        snapshots: dict[tuple[str, int], ModelStatistics] = pickle.loads(await self._engine.control("statistics"))
        for version in self.versions():
            snapshot = snapshots.get((version.name, version.version))
            if snapshot is not None and isinstance(version.statistics, ForwardedStatistics):
                version.statistics.update_from(snapshot)

    def engine_lost(self) -> None:
        """The supervisor says the engine died (SIGUSR1): every version is unavailable from now on."""
        self._engine.engine_lost()

    def _engine_gone(self) -> None:
        """Every version is unavailable from now on (readiness turns NOT_SERVING)."""
        for version in self.versions():
            version.state = ModelState.UNAVAILABLE
            version.reason = _ENGINE_GONE
        self._notify()

    def _apply(self, catalog: Catalog) -> None:
        if self._engine.lost:
            return
        if self._queue_board is None:
            try:
                board = TensorArena.attach(catalog.board_pid, catalog.board_descriptor, catalog.board_bytes)
                self._queue_board = board.array(0, (catalog.board_bytes // 8,), np.int64)
            except OSError as exc:
                _log.warning("cannot map the engine's queue board (%s); full queues refuse after decoding", exc)
        models: dict[str, dict[int, ModelVersion]] = {}
        for card in pickle.loads(catalog.cards):
            known = self._models.get(card.name, {}).get(card.version)
            if known is not None and known.load_seconds == card.load_seconds and known.metadata == card.metadata:
                known.state, known.reason = ModelState(card.state), card.reason
                version = known
            else:
                version = self._version_of(card)
            if self._queue_board is not None and card.queue_slot >= 0:
                version.queue_depth = self._queue_board[card.queue_slot : card.queue_slot + 1]
            models.setdefault(card.name, {})[card.version] = version
        self._models = models
        if catalog.loaded:
            self._loaded.set()
        self._notify()

    def _version_of(self, card: Any) -> FrontendModelVersion:
        metadata = card.metadata
        version = FrontendModelVersion(
            name=card.name,
            version=card.version,
            path=card.path,
            state=ModelState(card.state),
            reason=card.reason,
            metadata=metadata,
            spec=card.spec,
            batching=card.batching,
            runtime=card.runtime,
            run_info=card.run_info,
            load_seconds=card.load_seconds,
            engine=self._engine,
            provider=card.provider,
            fallback_reason=card.fallback_reason,
            output_width=len(metadata.labels) if metadata is not None else 0,
        )
        if metadata is not None:
            version.preprocessor = ImagePreprocessor(metadata.preprocessing, self._settings.max_image_pixels)
        version.statistics = ForwardedStatistics(self._engine, version)
        return version
