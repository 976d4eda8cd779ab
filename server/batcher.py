"""The dynamic batcher: requests that arrive together run as one session call.

One `DynamicBatcher` per model version. Callers `submit` an (n, C, H, W) array and await their own n output
rows. A single asyncio task forms batches:

1. wait for a free instance (a slot among `instances` concurrent session calls), so that while one batch runs
   the next one keeps filling in the queue. Once a full batch (`max_batch_size` rows) is queued, it does not wait:
   it is formed and staged behind the running ones (one staged batch at most), so that an instance goes from
   one batch straight to the next in its own thread instead of idling until the event loop gets round to it;
2. block until the first live request is queued;
3. fill until the queue holds `max_batch_size` rows or a preferred batch size, or until the oldest request has
   waited `max_queue_delay_seconds`, whichever comes first. With `adaptive_queue_delay` (`_AdaptiveDelay`),
   wait only while waiting can pay off: a lone caller's request runs at once instead of waiting out the whole
   delay, while concurrent callers still batch;
4. take whole requests, highest priority first and oldest first within a priority, up to `max_batch_size` rows
   (or the largest preferred size that the queue can fill), hand their inputs to the model in one call in a
   worker thread (it joins them straight into its own input buffer), turn the batch's outputs into answers there
   too (`finish_batch`: the model's probabilities, a dozen small numpy calls that would otherwise run on the event
   loop once per request), and hand each caller exactly its rows.

Background requests (`submit(..., background=True)`: the perturbed images of explanations) queue in a lane below
every priority level. They are taken only when no other request is queued, never share a batch with one, and
run in batches of at most a quarter of `max_batch_size` (`background_rows`), so a classification that arrives
meanwhile waits at most one small batch. Their rows do not count against `max_queue_size` (the lane has a bound
of its own, the same size) and do not wait out the queue delay.

Where the event loop has nothing else to do, a batch expected to compute in under `run_inline_below` seconds
(the running average of this batcher's session calls) runs on the loop's own thread instead of an instance's
worker thread. Handing a batch to a thread and its answer back costs two thread wake-ups, which on a virtual
machine take longer than a small CNN's batch (mnist_net: about 0.3 ms for 8 images). In the engine process of a
multi-process server the loop only feeds the batchers, so every such batch runs there, and the requests that
arrive meanwhile simply queue for the next one. In a single process the loop also does every call's gRPC work,
so a batch runs there only when `await inline_when()` says so: when the server runs no call but the batch's own
(a lone caller, whose every call then skips both wake-ups), never under load, where the loop's time is worth more
to the calls waiting for it than a thread hand-off costs. (That predicate may let the loop turn a few times before
it answers, so that calls the transport already holds show up first: server/drain.py, `CallGate.serves_one_call`.)

Requests larger than `max_batch_size` are cut into slices that queue separately. A full queue refuses at once
(QueueFullError). Each request carries a deadline on the monotonic clock. The batcher keeps the deadlines in a heap
and one timer, set for the earliest, that answers every unanswered request whose deadline has passed with
DeadlineExceededError, queued or in a batch that has not started. (A timer per request put an object, and
comparisons written in Python, into the event loop's own timer heap for every request: about 5 % of the engine
loop's work per request.) Such requests, like cancelled ones, are dropped before a batch is formed or starts,
never computed. A failed batch fails only its own callers, all with the same error. If the
batching task itself dies, every queued request fails at once instead of hanging.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import math
import time
import weakref
from collections import deque
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from cnnserve.server.errors import (
    CnnserveError,
    DeadlineExceededError,
    InferenceError,
    InvalidInputError,
    QueueFullError,
    UnavailableError,
)
from cnnserve.server.settings import BatchingSettings
from cnnserve.server.statistics import RequestStatistics, current_request

_log = logging.getLogger(__name__)
InlineWhen = Callable[[], Awaitable[bool]]
"""Whether a quick batch may run on the event loop's own thread now (awaited just before the batch runs)."""
_DEADLINE_HEAP_PURGE = 1024
"""The deadline heap's size below which answered requests are left in it (see `_forget_answered`)."""


@dataclass(eq=False, slots=True)
class _QueuedRequest:
    inputs: np.ndarray
    future: asyncio.Future[np.ndarray]
    enqueued_at: float
    deadline: float
    """On time.monotonic()."""
    queued: bool = True
    """True until the batcher takes it, or its caller gives up (cancelled, expired); its rows count till then."""
    batch_times: tuple[float, float, float, float] | None = None
    """When its batch started being assembled, started its session call, finished it, and had its outputs
    finished (`finish_batch`); set with its rows."""
    background: bool = False
    output: str | None = None
    """A background request's graph output other than the model's own (a layer's activations), or None."""

    @property
    def rows(self) -> int:
        return len(self.inputs)

    def add_to_request_statistics(self, statistics: RequestStatistics) -> None:
        """Add this request's wait and its batch's compute times to `statistics`, the call's it serves."""
        assert self.batch_times is not None
        started, assembled, computed, finished = self.batch_times
        statistics.queue += started - self.enqueued_at
        statistics.compute_input += assembled - started
        statistics.compute_infer += computed - assembled
        statistics.compute_output += finished - computed
        statistics.inferences += self.rows


@dataclass(frozen=True, slots=True)
class BatchRecord:
    """What one executed batch looked like; handed to the batcher's observer."""

    size: int
    requests: int
    queue_wait_seconds: tuple[float, ...]
    """Per request: from enqueue to the start of its batch. Empty for a background batch: its requests wait for
    idle capacity by design, and counting that would make the queue-wait metric (which autoscaling reads) say
    the model is overloaded when explanations merely wait their turn."""
    compute_seconds: float
    """The session call."""
    failed: bool
    input_seconds: float = 0.0
    """Assembling the batch's requests (their inputs are joined by the model's run, counted in compute)."""
    output_seconds: float = 0.0
    """Finishing the batch's outputs (`finish_batch`) and handing each request its rows."""


RunBatch = Callable[[list[np.ndarray]], np.ndarray]
"""Runs a batch given as its requests' inputs, in order: the batch is their concatenation, left to the model so
that it can write them straight into a buffer of its own (one copy instead of two)."""
RunOutput = Callable[[np.ndarray, str], np.ndarray]
"""Runs a batch for one named graph output instead of the model's own."""
FinishBatch = Callable[[np.ndarray], np.ndarray]
"""Turns the outputs of a batch of foreground requests into what their callers receive, row for row."""
OnDone = Callable[[asyncio.Future[np.ndarray]], object]
"""Called with a `submit_nowait` request's future once it is done."""


@dataclass(frozen=True, slots=True)
class _BatchRun:
    """What an instance did with a batch: the requests it ran, their outputs or the error, and when (it started
    assembling the input, started the session call, finished it, finished the outputs)."""

    requests: list[_QueuedRequest]
    outputs: np.ndarray | None
    error: Exception | None
    started: float
    assembled: float
    computed: float
    finished: float


class DynamicBatcher:
    """Groups concurrent requests for one model into batches; see the module docstring for the contract."""

    def __init__(
        self,
        run_batch: RunBatch,
        settings: BatchingSettings,
        *,
        name: str,
        on_batch: Callable[[BatchRecord], None] | None = None,
        run_output: RunOutput | None = None,
        finish_batch: FinishBatch | None = None,
        run_inline_below: float = 0.0,
        inline_when: InlineWhen | None = None,
        executor: ThreadPoolExecutor | None = None,
    ) -> None:
        """`executor`: the instance threads that run batches (it must have `settings.instances` threads; the batcher
        shuts it down on close), else threads of the batcher's own."""
        self._run_batch = run_batch
        self._run_output = run_output
        self._finish_batch = finish_batch
        self._settings = settings
        self._name = name
        self._on_batch = on_batch
        self._queues: list[deque[_QueuedRequest]] = [deque() for _ in range(settings.priority_levels)]
        self._queued_rows = 0
        self._background: deque[_QueuedRequest] = deque()
        self._background_rows = 0
        self._depth: np.ndarray | None = None
        self._preferred = frozenset(settings.preferred_batch_sizes)
        self._wakeup = asyncio.Event()
        self._timed_out = False
        """Whether the batching task's last timed wait ended by its time running out (`_woken_within`)."""
        self._delay_advisor = (
            _AdaptiveDelay(settings.max_queue_delay_seconds) if settings.adaptive_queue_delay else None
        )
        self._in_flight = 0
        """Batches handed to the executor and not finished: running, or one staged behind the running ones."""
        self._instance_freed = asyncio.Event()
        self._inline_below = run_inline_below
        self._inline_when = inline_when
        self._compute_estimate: float | None = None
        """The running average of session calls' seconds (None before the first)."""
        self._executor = executor or ThreadPoolExecutor(settings.instances, thread_name_prefix=f"infer-{name}")
        self._running: set[asyncio.Task[None]] = set()
        self._deadlines: list[tuple[float, int, weakref.ref[asyncio.Future[np.ndarray]]]] = []
        """A heap of (deadline, arrival number, a weak reference to the request's future). Answered requests leave
        it lazily (`_forget_answered`); meanwhile the weak reference keeps neither the request's input nor its
        answer (a layer's activations, for an explanation, may be megabytes) alive."""
        self._arrivals = itertools.count()
        self._forget_answered_at = _DEADLINE_HEAP_PURGE
        self._deadline_timer: asyncio.TimerHandle | None = None
        self._timer_deadline = math.inf
        """When the deadline timer fires (infinity: it is not set)."""
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    @property
    def settings(self) -> BatchingSettings:
        return self._settings

    @property
    def queued_rows(self) -> int:
        return self._queued_rows

    @property
    def background_rows(self) -> int:
        """The most rows of one background batch: a quarter of `max_batch_size`, at least 1."""
        return max(1, self._settings.max_batch_size // 4)

    def publish_depth(self, cell: np.ndarray) -> None:
        """Keep `cell[0]` equal to the queued rows from now on: a slot of shared memory where the front-end
        processes of a multi-process server read it, to refuse a request before decoding it."""
        self._depth = cell
        cell[0] = self._queued_rows

    def _add_queued(self, rows: int) -> None:
        self._queued_rows += rows
        if self._depth is not None:
            self._depth[0] = self._queued_rows

    def refuse_if_full(self, rows: int) -> None:
        """Raise QueueFullError when `rows` more would not fit right now, so that callers can refuse a request
        before paying for its decoding (`submit` checks again: the queue may fill in between)."""
        if self._queued_rows + rows > self._settings.max_queue_size:
            raise self._queue_full(rows)

    def start(self) -> None:
        """Start the batching task on the running loop."""
        self._task = asyncio.get_running_loop().create_task(self._form_batches(), name=f"batcher-{self._name}")

    async def submit(
        self,
        inputs: np.ndarray,
        deadline: float,
        priority: int = 0,
        *,
        background: bool = False,
        output: str | None = None,
    ) -> np.ndarray:
        """Queue `inputs` (n rows) and wait for its n output rows.

        `deadline` is on `time.monotonic()`; `priority` is 1 (first) .. priority_levels, 0 for the default.
        `background` queues below every priority instead (see the module docstring; `priority` is ignored); a
        background request may name another graph `output` to compute (run by `run_output`, in batches of
        requests for the same output only).
        Raises QueueFullError at once when the queue cannot take the rows, DeadlineExceededError when the
        deadline passes before the batch runs, UnavailableError once the batcher is closing, InvalidInputError
        for an unknown priority, and the batch's error when the batch fails.
        """
        level, limit = self._admit(len(inputs), priority, background, output)
        if len(inputs) > limit:
            slices = [inputs[start : start + limit] for start in range(0, len(inputs), limit)]
            parts = await asyncio.gather(
                *(self.submit(part, deadline, level, background=background, output=output) for part in slices)
            )
            return np.concatenate(parts)
        request = self._queue(inputs, deadline, level, background, output)
        try:
            outputs = await request.future
        finally:
            self._settle(request)
        request.add_to_request_statistics(current_request())
        return outputs

    def submit_nowait(
        self,
        inputs: np.ndarray,
        deadline: float,
        priority: int,
        statistics: RequestStatistics,
        on_done: OnDone,
        company: bool = False,
    ) -> asyncio.Future[np.ndarray]:
        """`submit` for a foreground request of at most `max_batch_size` rows, without a coroutine: for a caller
        that answers from a callback (the engine of a multi-process server, where a task per request took about
        a quarter of its event loop's work for that request).

        Raises at once what `submit` raises at once (and ValueError for more rows than a batch). Returns the
        request's future, which holds the output rows or the error `submit` would raise later; once it is done,
        `on_done(future)` is called (after the request's figures were added to `statistics` when it succeeded).
        Cancelling the future drops the request from the queue. `company` says that the sender has more requests
        on their way (see `_AdaptiveDelay`).
        """
        level, limit = self._admit(len(inputs), priority, False, None)
        if len(inputs) > limit:
            raise ValueError(f"{len(inputs)} rows are more than one batch of {limit}; use submit, which slices them")
        request = self._queue(inputs, deadline, level, False, None, company)
        request.future.add_done_callback(lambda future: self._settled(request, future, statistics, on_done))
        return request.future

    def _admit(self, rows: int, priority: int, background: bool, output: str | None) -> tuple[int, int]:
        """The queue level and the most rows per queued request for a new request, or what refuses it at once."""
        if self._closed:
            raise UnavailableError(f"model {self._name} is unloading or the server is shutting down; retry")
        settings = self._settings
        if background:
            if self._background_rows + rows > settings.max_queue_size:
                raise queue_full_error(
                    f"{self._name} (background work)", self._background_rows, settings.max_queue_size, rows
                )
            return 0, self.background_rows
        if output is not None:
            raise ValueError("only background requests may ask for another graph output")
        level = priority or settings.default_priority
        if not 1 <= level <= settings.priority_levels:
            raise InvalidInputError(
                f"priority {priority} is out of range: model {self._name} has priority levels "
                f"1..{settings.priority_levels}"
            )
        self.refuse_if_full(rows)
        return level, settings.max_batch_size

    def _queue(
        self,
        inputs: np.ndarray,
        deadline: float,
        level: int,
        background: bool,
        output: str | None,
        company: bool = False,
    ) -> _QueuedRequest:
        """Queue an admitted request of at most one batch, to be expired at `deadline`."""
        future = asyncio.get_running_loop().create_future()
        if background:
            request = self._enqueue_background(inputs, future, deadline, output)
        else:
            request = self._enqueue(inputs, future, deadline, level, company)
        heapq.heappush(self._deadlines, (deadline, next(self._arrivals), weakref.ref(future)))
        if len(self._deadlines) >= self._forget_answered_at:
            self._forget_answered()
        if deadline < self._timer_deadline:
            self._expire_at(deadline)
        return request

    def _settle(self, request: _QueuedRequest) -> None:
        """The request is answered, or its caller gave up: free its queue space if it is still queued."""
        if request.queued:
            self._unqueue(request)

    def _expire_at(self, deadline: float) -> None:
        """Set the deadline timer to fire at `deadline` (earlier than it is set for)."""
        if self._deadline_timer is not None:
            self._deadline_timer.cancel()
        loop = asyncio.get_running_loop()
        self._timer_deadline = deadline
        self._deadline_timer = loop.call_at(_loop_time(loop, deadline), self._expire_due)

    def _expire_due(self) -> None:
        """The deadline timer: answer every unanswered request whose deadline has passed, then set the timer for
        the earliest deadline left. Requests answered meanwhile leave the heap on the way."""
        self._deadline_timer, self._timer_deadline = None, math.inf
        now = time.monotonic()
        deadlines = self._deadlines
        while deadlines and (deadlines[0][0] <= now or _answered(deadlines[0][2])):
            _, _, waiting = heapq.heappop(deadlines)
            future = waiting()
            if future is not None and not future.done():
                future.set_exception(
                    DeadlineExceededError(f"the request to model {self._name} waited in the queue past its deadline")
                )
        if deadlines:
            self._expire_at(deadlines[0][0])

    def _forget_answered(self) -> None:
        """Drop answered requests from the deadline heap. It is rebuilt once it has doubled since the last time,
        so the heap stays within twice the unanswered requests (plus a constant) for a constant cost per request."""
        self._deadlines = [entry for entry in self._deadlines if not _answered(entry[2])]
        heapq.heapify(self._deadlines)
        self._forget_answered_at = max(_DEADLINE_HEAP_PURGE, 2 * len(self._deadlines))

    def _settled(
        self,
        request: _QueuedRequest,
        future: asyncio.Future[np.ndarray],
        statistics: RequestStatistics,
        on_done: OnDone,
    ) -> None:
        self._settle(request)
        if not future.cancelled() and future.exception() is None:
            request.add_to_request_statistics(statistics)
        on_done(future)

    def _enqueue(
        self, inputs: np.ndarray, future: asyncio.Future[np.ndarray], deadline: float, level: int, company: bool
    ) -> _QueuedRequest:
        """Queue a request at priority `level` and wake the batching task when it may want to act on it."""
        now = time.monotonic()
        request = _QueuedRequest(inputs, future, now, deadline)
        if self._delay_advisor is not None:
            self._delay_advisor.arrived(now, joins_others=self._queued_rows > 0, company=company)
        self._queues[level - 1].append(request)
        self._add_queued(request.rows)
        rows, limit = self._queued_rows, self._settings.max_batch_size
        if rows == request.rows or rows >= limit or rows in self._preferred:
            self._wakeup.set()
            if rows >= limit:
                self._instance_freed.set()
        return request

    def _enqueue_background(
        self, inputs: np.ndarray, future: asyncio.Future[np.ndarray], deadline: float, output: str | None
    ) -> _QueuedRequest:
        request = _QueuedRequest(inputs, future, time.monotonic(), deadline, background=True, output=output)
        self._background.append(request)
        self._background_rows += request.rows
        if self._queued_rows == 0:
            self._wakeup.set()
        return request

    def _unqueue(self, request: _QueuedRequest) -> None:
        """Take a request out of its lane's count: the batcher took it, or its caller gave up."""
        request.queued = False
        if request.background:
            self._background_rows -= request.rows
        else:
            self._add_queued(-request.rows)

    async def close(self, drain_seconds: float) -> None:
        """Refuse new requests, let queued and running batches finish for up to `drain_seconds`, then stop.

        Whatever is still queued after that fails with UnavailableError.
        """
        self._closed = True
        end = time.monotonic() + drain_seconds
        while (self._queued_rows or self._background_rows or self._running) and time.monotonic() < end:
            await asyncio.sleep(0.01)
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            # The finished task keeps its CancelledError, whose traceback keeps this batcher's frames: a cycle.
            self._task = None
        self._fail_queued(UnavailableError(f"model {self._name} was unloaded before this request ran; retry"))
        self._executor.shutdown(wait=False, cancel_futures=True)

    def _queue_full(self, rows: int) -> QueueFullError:
        return queue_full_error(self._name, self._queued_rows, self._settings.max_queue_size, rows)

    async def _form_batches(self) -> None:
        try:
            while True:
                await self._wait_for_instance()
                self._start(await self._next_batch())
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            _log.exception("batcher of %s died", self._name)
            self._fail_queued(InferenceError(f"the batcher of model {self._name} failed: {exc}"))
            self._closed = True
            raise

    def _start(self, batch: list[_QueuedRequest]) -> None:
        """Hand a batch to an instance. (Not inline in `_form_batches`: a local there would keep the last batch,
        its inputs and its answers, alive until the next batch forms.)"""
        self._in_flight += 1
        task = asyncio.get_running_loop().create_task(self._execute(batch))
        self._running.add(task)
        task.add_done_callback(self._running.discard)

    async def _wait_for_instance(self) -> None:
        """Return once an instance is free, or once a full batch is queued and can be staged behind the running
        batches (it could not grow by waiting, and the instance that frees first then starts it without a trip
        through the event loop)."""
        instances = self._settings.instances
        while True:
            if self._in_flight < instances:
                return
            if self._in_flight == instances and self._queued_rows >= self._settings.max_batch_size:
                return
            self._instance_freed.clear()
            await self._instance_freed.wait()

    async def _next_batch(self) -> list[_QueuedRequest]:
        """Block for the first live request, fill until a batch is worth running, then take one."""
        settings = self._settings
        while True:
            oldest = self._oldest_live()
            if oldest is None:
                background = self._take_background()
                if background:
                    return background
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            dispatch_at = oldest.enqueued_at + settings.max_queue_delay_seconds
            while not self._worth_running_now():
                now = time.monotonic()
                remaining = dispatch_at - now
                if remaining <= 0:
                    break
                wait = remaining
                if self._delay_advisor is not None:
                    advised = self._delay_advisor.wait(now, remaining)
                    if advised is None:
                        break
                    wait = advised
                if not await self._woken_within(wait) and wait >= remaining:
                    break
            batch = self._take()
            if batch:
                if self._delay_advisor is not None:
                    self._delay_advisor.batch_taken(len(batch))
                return batch

    async def _woken_within(self, seconds: float) -> bool:
        """Wait until a request wakes the batching task or `seconds` pass; whether a request woke it.

        A plain timer sets the same event the requests set. `asyncio.timeout` would instead cancel the wait and turn
        the cancellation into a TimeoutError, two exceptions raised and caught each time, and a batch forming under
        load waits like this several times (once per expected gap between arrivals, about five times a batch at 64
        callers): a step of the batching task on the engine's loop took 24-27 µs with the timer, 31-32 µs with
        `asyncio.timeout` (load_tests.bench.loop_census, two runs each, alternating)."""
        self._wakeup.clear()
        self._timed_out = False
        timer = asyncio.get_running_loop().call_later(seconds, self._time_is_up)
        try:
            await self._wakeup.wait()
        finally:
            timer.cancel()
        return not self._timed_out

    def _time_is_up(self) -> None:
        self._timed_out = True
        self._wakeup.set()

    def _worth_running_now(self) -> bool:
        rows = self._queued_rows
        return rows >= self._settings.max_batch_size or any(size <= rows for size in self._preferred)

    def _oldest_live(self) -> _QueuedRequest | None:
        """The front request of the highest non-empty priority, after dropping requests whose callers left."""
        for queue in self._queues:
            while queue and not queue[0].queued:
                queue.popleft()
            if queue:
                return queue[0]
        return None

    def _take_background(self) -> list[_QueuedRequest]:
        """Whole live background requests for the same graph output, oldest first, up to `background_rows` rows
        (at least one request)."""
        batch: list[_QueuedRequest] = []
        rows = 0
        queue = self._background
        while queue:
            request = queue[0]
            if not request.queued:
                queue.popleft()
                continue
            if batch and (rows + request.rows > self.background_rows or request.output != batch[0].output):
                break
            queue.popleft()
            self._unqueue(request)
            batch.append(request)
            rows += request.rows
        return batch

    def _take(self) -> list[_QueuedRequest]:
        """Whole live requests, by priority then age, up to the target size: the max batch size, or the largest
        preferred size the queue can fill when it cannot fill the max."""
        target = self._settings.max_batch_size
        if self._queued_rows < target and self._preferred:
            target = max((size for size in self._preferred if size <= self._queued_rows), default=target)
        batch: list[_QueuedRequest] = []
        rows = 0
        for queue in self._queues:
            while queue:
                request = queue[0]
                if not request.queued:
                    queue.popleft()
                    continue
                if batch and rows + request.rows > target:
                    return batch
                queue.popleft()
                self._unqueue(request)
                batch.append(request)
                rows += request.rows
        return batch

    async def _execute(self, batch: list[_QueuedRequest]) -> None:
        try:
            if self._computes_quickly() and (self._inline_when is None or await self._inline_when()):
                run = self._run_live(batch)  # on the event loop's thread (see the module docstring)
            else:
                run = await asyncio.get_running_loop().run_in_executor(self._executor, self._run_live, batch)
        except Exception as exc:
            now = time.monotonic()
            run = _BatchRun(batch, None, exc, now, now, now, now)
        finally:
            self._in_flight -= 1
            self._instance_freed.set()
        self._answer(run)

    def _answer(self, run: _BatchRun) -> None:
        """Hand each request of a run batch its rows (or the batch's error), then tell the observer."""
        if not run.requests:
            return
        self._learn_compute(run.finished - run.assembled)
        batch_times = (run.started, run.assembled, run.computed, run.finished)
        rows = sum(request.rows for request in run.requests)
        failure = run.error
        if failure is None and (run.outputs is None or len(run.outputs) != rows):
            count = "no" if run.outputs is None else len(run.outputs)
            failure = InferenceError(f"model {self._name} returned {count} rows for a batch of {rows}")
        handing_out = time.monotonic()
        if failure is None:
            assert run.outputs is not None
            offset = 0
            for request in run.requests:
                if not request.future.done():
                    request.batch_times = batch_times
                    request.future.set_result(run.outputs[offset : offset + request.rows])
                offset += request.rows
        else:
            error = (
                failure
                if isinstance(failure, CnnserveError)
                else InferenceError(f"model {self._name} failed on a batch of {rows} images: {failure}")
            )
            _log.warning("batch of %d for %s failed: %s", rows, self._name, failure)
            for request in run.requests:
                if not request.future.done():
                    request.future.set_exception(error)
        if self._on_batch is not None:
            self._on_batch(
                BatchRecord(
                    size=rows,
                    requests=len(run.requests),
                    queue_wait_seconds=()
                    if run.requests[0].background
                    else tuple(run.started - request.enqueued_at for request in run.requests),
                    compute_seconds=run.computed - run.assembled,
                    failed=failure is not None,
                    input_seconds=run.assembled - run.started,
                    output_seconds=run.finished - run.computed + time.monotonic() - handing_out,
                )
            )

    def _computes_quickly(self) -> bool:
        """Whether this batcher's batches take under `run_inline_below` (on average, once one was timed): quick
        enough to run on the event loop's thread where `inline_when` allows. Checked first, so that a batch bound
        for a worker thread awaits no predicate."""
        estimate = self._compute_estimate
        return estimate is not None and estimate < self._inline_below

    def _learn_compute(self, seconds: float) -> None:
        estimate = self._compute_estimate
        self._compute_estimate = seconds if estimate is None else estimate + 0.2 * (seconds - estimate)

    def _run_live(self, batch: list[_QueuedRequest]) -> _BatchRun:
        """In an instance's thread (or the loop's, for a batch run inline): assemble and run the batch's requests
        that are still waiting for an answer.

        A staged batch may wait a whole batch's time for its instance; requests answered meanwhile (deadline
        passed, caller cancelled) are left out, so that they are never computed. Reading `future.done()` from
        this thread is only a read; a request that expires just after it still gets its computed rows dropped.
        """
        live = [request for request in batch if not request.future.done()]
        started = assembled = time.monotonic()
        if not live:
            return _BatchRun(live, None, None, started, started, started, started)
        try:
            parts = [request.inputs for request in live]
            assembled = time.monotonic()
            output = live[0].output
            if output is None:
                outputs = self._run_batch(parts)
            elif self._run_output is None:
                raise InferenceError(f"model {self._name} cannot compute graph output {output!r}")
            else:
                outputs = self._run_output(parts[0] if len(parts) == 1 else np.concatenate(parts), output)
            computed = time.monotonic()
            if self._finish_batch is not None and not live[0].background:
                outputs = self._finish_batch(outputs)
        except Exception as exc:
            now = time.monotonic()
            return _BatchRun(live, None, exc, started, assembled, now, now)
        return _BatchRun(live, outputs, None, started, assembled, computed, time.monotonic())

    def _fail_queued(self, error: CnnserveError) -> None:
        for queue in (*self._queues, self._background):
            while queue:
                request = queue.popleft()
                if request.queued:
                    self._unqueue(request)
                    if not request.future.done():
                        request.future.set_exception(error)


class _AdaptiveDelay:
    """Decides, for the adaptive queue delay, whether waiting for more requests can pay off.

    Two estimates, both exponentially weighted: the time between arrivals that meet in the queue (gaps capped at
    twice the delay) and the requests per batch taken. While batches hold one request each, callers
    are not overlapping (a lone closed-loop caller never sends its next request before this one is answered), so
    waiting only adds latency: run at once. Otherwise wait, but only while the next request is expected before the
    delay runs out, and not once two average gaps have passed without one: callers in lockstep (a closed loop of
    a few callers) are then all in the batch, and waiting out the delay would idle the server. Batches still form
    from whatever queued while an instance was busy.
    """

    def __init__(self, max_delay: float) -> None:
        self._gap_cap = 2 * max_delay
        self._gap = float("inf")
        self._last_arrival: float | None = None
        self._requests_per_batch = 1.0
        self._company_coming = False

    def arrived(self, now: float, joins_others: bool, company: bool = False) -> None:
        """Count an arrival. Only gaps between requests that meet in the queue are learned: a gap that ends in an
        empty queue spans a wait for answers (callers in a closed loop), not how fast company comes.

        A request whose sender said more are on their way (`company`: a front-end with other calls accepted and
        not yet sent) counts as meeting others, and lets the next batch wait for them even while batches have
        been holding one request each. A front-end is slower at a call's gRPC work than the engine at answering
        a lone request, so without it the requests of a burst could reach the engine one at a time, each after
        the last was answered, and run as a convoy, one call a batch."""
        if self._last_arrival is not None and (joins_others or company):
            gap = min(now - self._last_arrival, self._gap_cap)
            self._gap = gap if self._gap == float("inf") else self._gap + 0.25 * (gap - self._gap)
        self._last_arrival = now
        self._company_coming = company

    def batch_taken(self, requests: int) -> None:
        self._requests_per_batch += 0.2 * (requests - self._requests_per_batch)

    def wait(self, now: float, remaining: float) -> float | None:
        """How long to wait for company now, or None to run the batch at once."""
        if self._requests_per_batch < 1.25 and not self._company_coming:
            return None
        silence = now - (self._last_arrival or now)
        if silence >= 2 * self._gap:
            return None  # the burst is over: callers in lockstep (a closed loop) are all in this batch already
        if self._gap >= remaining:
            return None
        return min(remaining, 2 * self._gap - silence)


def queue_full_error(model: str, queued: int, limit: int, rows: int) -> QueueFullError:
    """What a caller hears when `rows` more images do not fit in `model`'s queue."""
    return QueueFullError(
        f"model {model} has {queued} images queued and takes at most {limit}; {rows} more do not fit. "
        "Retry with backoff"
    )


def _answered(waiting: weakref.ref[asyncio.Future[np.ndarray]]) -> bool:
    """Whether a request in the deadline heap needs no expiring: answered, or gone with its caller."""
    future = waiting()
    return future is None or future.done()


def _loop_time(loop: asyncio.AbstractEventLoop, deadline: float) -> float:
    """Convert a `time.monotonic()` deadline to the loop's clock (the same clock on CPython, but not promised)."""
    return loop.time() + (deadline - time.monotonic())
