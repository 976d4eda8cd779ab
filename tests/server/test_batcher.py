"""The dynamic batcher on its own, driven deterministically: batches are released by events, not sleeps."""

from __future__ import annotations

import asyncio
import gc
import threading
import time
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from cnnserve.server.batcher import BatchRecord, DynamicBatcher
from cnnserve.server.drain import CallGate
from cnnserve.server.errors import (
    DeadlineExceededError,
    InferenceError,
    InvalidInputError,
    QueueFullError,
    UnavailableError,
)
from cnnserve.server.settings import BatchingSettings
from cnnserve.server.statistics import RequestStatistics, start_request_statistics


class GatedModel:
    """Doubles its input; each call blocks until the test opens the gate, and records the batch sizes it saw."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.started = threading.Event()
        self.batch_sizes: list[int] = []
        self.fail_when: int | None = None

    def __call__(self, parts: list[np.ndarray]) -> np.ndarray:
        batch = np.concatenate(parts)
        self.batch_sizes.append(len(batch))
        self.started.set()
        self.gate.wait(timeout=10)
        if self.fail_when is not None and self.fail_when in batch:
            raise RuntimeError("this batch is poisoned")
        return batch * 2


def rows(*values: float) -> np.ndarray:
    return np.asarray(values, dtype=np.float32).reshape(-1, 1)


def far() -> float:
    return time.monotonic() + 30


async def started(model: GatedModel) -> None:
    assert await asyncio.to_thread(model.started.wait, 5), "no batch started"


@pytest.fixture
def model() -> GatedModel:
    return GatedModel()


MakeBatcher = Callable[..., DynamicBatcher]


@pytest.fixture
async def make_batcher(model: GatedModel) -> AsyncIterator[MakeBatcher]:
    """Builds started batchers (running `model` unless given another `run`) and closes every one afterwards,
    passed or failed, after opening the gate so that no batch is left blocking its thread."""
    made: list[DynamicBatcher] = []

    def make(
        run: Callable[[list[np.ndarray]], np.ndarray] | None = None,
        on_batch: Callable[[BatchRecord], None] | None = None,
        run_inline_below: float = 0.0,
        finish_batch: Callable[[np.ndarray], np.ndarray] | None = None,
        inline_when: Callable[[], bool] | None = None,
        executor: ThreadPoolExecutor | None = None,
        **settings: object,
    ) -> DynamicBatcher:
        defaults: dict[str, object] = {
            "max_batch_size": 4,
            "max_queue_delay_ms": 5000,
            "max_queue_size": 16,
            "adaptive_queue_delay": False,
        }
        batching = BatchingSettings(**{**defaults, **settings})
        batcher = DynamicBatcher(
            run or model,
            batching,
            name="gated",
            on_batch=on_batch,
            finish_batch=finish_batch,
            run_inline_below=run_inline_below,
            inline_when=inline_when,
            executor=executor,
        )
        batcher.start()
        made.append(batcher)
        return batcher

    try:
        yield make
    finally:
        model.gate.set()
        for batcher in made:
            await batcher.close(1)


async def test_each_caller_gets_exactly_its_own_rows(model: GatedModel, make_batcher: MakeBatcher) -> None:
    model.gate.set()
    batcher = make_batcher()
    results = await asyncio.gather(
        batcher.submit(rows(1), far()), batcher.submit(rows(2, 3), far()), batcher.submit(rows(4), far())
    )
    assert [r.ravel().tolist() for r in results] == [[2], [4, 6], [8]]
    assert model.batch_sizes == [4], "a full batch should run at once, without waiting out the delay"


async def test_a_batch_is_finished_in_one_call_and_its_time_counts_as_each_callers_output_time(
    model: GatedModel, make_batcher: MakeBatcher
) -> None:
    finished: list[list[float]] = []

    def add_one_slowly(outputs: np.ndarray) -> np.ndarray:
        finished.append(outputs.ravel().tolist())
        time.sleep(0.02)
        return outputs + 1

    async def submit(inputs: np.ndarray, **how: object) -> tuple[list[float], RequestStatistics]:
        statistics = start_request_statistics()
        answer = await batcher.submit(inputs, far(), **how)
        return answer.ravel().tolist(), statistics

    model.gate.set()
    batcher = make_batcher(finish_batch=add_one_slowly)
    answers = await asyncio.gather(submit(rows(1)), submit(rows(2, 3)), submit(rows(4)))
    assert [answer for answer, _ in answers] == [[3], [5, 7], [9]]
    assert finished == [[2, 4, 6, 8]], "the whole batch is finished in one call"
    assert all(statistics.compute_output >= 0.02 for _, statistics in answers)
    background, _ = await submit(rows(5), background=True)
    assert background == [10], "background rows come back as the model computed them"
    assert len(finished) == 1


async def test_submit_nowait_answers_through_its_future_as_submit_does(
    model: GatedModel, make_batcher: MakeBatcher
) -> None:
    batcher = make_batcher(max_batch_size=4, max_queue_size=8, max_queue_delay_ms=0)
    running = asyncio.ensure_future(batcher.submit(rows(0), far()))
    await started(model)
    statistics = [RequestStatistics() for _ in range(4)]
    done: list[asyncio.Future[np.ndarray]] = []
    with pytest.raises(ValueError, match="use submit"):
        batcher.submit_nowait(rows(4, 5, 6, 7, 8), far(), 0, statistics[3], done.append)
    kept = batcher.submit_nowait(rows(1), far(), 0, statistics[0], done.append)
    cancelled = batcher.submit_nowait(rows(2), far(), 0, statistics[1], done.append)
    expiring = batcher.submit_nowait(rows(3), time.monotonic() + 0.05, 0, statistics[2], done.append)
    with pytest.raises(QueueFullError):
        batcher.submit_nowait(rows(4, 5, 6, 7, 8, 9), far(), 0, statistics[3], done.append)
    cancelled.cancel()
    with pytest.raises(DeadlineExceededError):
        await expiring
    await asyncio.sleep(0)
    assert batcher.queued_rows == 1, "the cancelled and the expired request left the queue"
    model.gate.set()
    assert (await running).item() == 0 and (await kept).item() == 2
    await asyncio.sleep(0)
    assert model.batch_sizes == [1, 1], "neither the cancelled nor the expired request ran"
    assert statistics[0].inferences == 1 and statistics[0].queue > 0
    assert statistics[1].inferences == statistics[2].inferences == 0
    assert done == [cancelled, expiring, kept], "each caller hears once, when its request is done"


async def test_batch_never_exceeds_max_and_large_requests_are_sliced(
    model: GatedModel, make_batcher: MakeBatcher
) -> None:
    model.gate.set()
    batcher = make_batcher(max_batch_size=4, max_queue_delay_ms=1)
    result = await batcher.submit(rows(*range(10)), far())
    assert result.ravel().tolist() == [2 * v for v in range(10)]
    assert max(model.batch_sizes) <= 4 and sum(model.batch_sizes) == 10


async def test_next_batch_fills_while_one_runs(model: GatedModel, make_batcher: MakeBatcher) -> None:
    batcher = make_batcher(max_batch_size=8, max_queue_delay_ms=0)
    first = asyncio.ensure_future(batcher.submit(rows(0), far()))
    await started(model)
    waiting = [asyncio.ensure_future(batcher.submit(rows(v), far())) for v in range(1, 6)]
    await asyncio.sleep(0)
    model.gate.set()
    await asyncio.gather(first, *waiting)
    assert model.batch_sizes == [1, 5]


async def test_full_queue_refuses_at_once(model: GatedModel, make_batcher: MakeBatcher) -> None:
    batcher = make_batcher(max_batch_size=1, max_queue_size=2, max_queue_delay_ms=0)
    running = asyncio.ensure_future(batcher.submit(rows(0), far()))
    await started(model)
    queued = [asyncio.ensure_future(batcher.submit(rows(v), far())) for v in (1, 2)]
    await asyncio.sleep(0)
    with pytest.raises(QueueFullError, match="at most 2"):
        await batcher.submit(rows(3), far())
    model.gate.set()
    await asyncio.gather(running, *queued)


async def test_expired_request_is_answered_and_never_computed(model: GatedModel, make_batcher: MakeBatcher) -> None:
    batcher = make_batcher(max_batch_size=1, max_queue_delay_ms=0)
    running = asyncio.ensure_future(batcher.submit(rows(0), far()))
    await started(model)
    with pytest.raises(DeadlineExceededError):
        await batcher.submit(rows(7), time.monotonic() + 0.05)
    model.gate.set()
    await running
    await batcher.submit(rows(1), far())
    assert model.batch_sizes == [1, 1], "the expired request must not have run"


async def test_each_request_expires_at_its_own_deadline_whatever_order_they_came_in(
    model: GatedModel, make_batcher: MakeBatcher
) -> None:
    """One timer serves the batcher: a later request with an earlier deadline must set it earlier. The first
    waiting request is staged behind the running batch (out of the queue), and expires there all the same."""
    batcher = make_batcher(max_batch_size=1, max_queue_delay_ms=0)
    running = asyncio.ensure_future(batcher.submit(rows(0), far()))
    await started(model)
    now = time.monotonic()
    late = asyncio.ensure_future(batcher.submit(rows(1), now + 0.5))
    early = asyncio.ensure_future(batcher.submit(rows(2), now + 0.05))
    kept = asyncio.ensure_future(batcher.submit(rows(3), far()))
    with pytest.raises(DeadlineExceededError):
        await early
    assert not late.done(), "the early deadline fired at its own time, not the late one's"
    with pytest.raises(DeadlineExceededError):
        await late
    model.gate.set()
    assert (await running).item() == 0 and (await kept).item() == 6
    assert model.batch_sizes == [1, 1], "neither expired request ran"


async def test_answered_requests_do_not_pile_up_behind_their_deadlines(
    model: GatedModel, make_batcher: MakeBatcher
) -> None:
    """Deadlines of 30 s and 3,000 requests answered at once: what the batcher keeps to expire them stays bounded
    (it would hold every request until its deadline otherwise)."""
    model.gate.set()
    batcher = make_batcher(max_batch_size=64, max_queue_size=256, max_queue_delay_ms=0)
    for _ in range(30):
        await asyncio.gather(*(batcher.submit(rows(1), far()) for _ in range(100)))
    assert len(batcher._deadlines) <= 2048
    answer = await batcher.submit(rows(2), far())
    answered = weakref.ref(answer)
    del answer
    await asyncio.sleep(0)  # the loop's callback that resumed this test holds the answer's future till it returns
    gc.collect()
    assert answered() is None, "an answer lives no longer than its caller holds it"


async def test_cancelled_request_is_dropped_without_touching_others(
    model: GatedModel, make_batcher: MakeBatcher
) -> None:
    batcher = make_batcher(max_batch_size=1, max_queue_delay_ms=0)
    running = asyncio.ensure_future(batcher.submit(rows(0), far()))
    await started(model)
    cancelled = asyncio.ensure_future(batcher.submit(rows(5), far()))
    kept = asyncio.ensure_future(batcher.submit(rows(6), far()))
    await asyncio.sleep(0)
    cancelled.cancel()
    model.gate.set()
    assert (await running).item() == 0 and (await kept).item() == 12
    assert cancelled.cancelled()
    assert model.batch_sizes == [1, 1]


async def test_a_failed_batch_fails_only_its_own_callers(model: GatedModel, make_batcher: MakeBatcher) -> None:
    model.fail_when = 13
    records: list[BatchRecord] = []
    batcher = make_batcher(on_batch=records.append, max_batch_size=2)
    model.gate.set()
    poisoned = await asyncio.gather(
        batcher.submit(rows(13), far()), batcher.submit(rows(1), far()), return_exceptions=True
    )
    assert all(isinstance(r, InferenceError) for r in poisoned)
    assert poisoned[0] is poisoned[1], "every caller of a failed batch gets the same error"
    healthy = await asyncio.gather(batcher.submit(rows(2), far()), batcher.submit(rows(3), far()))
    assert [h.item() for h in healthy] == [4, 6]
    assert [r.failed for r in records] == [True, False]


async def test_closing_refuses_new_requests_and_drains_accepted_ones(
    model: GatedModel, make_batcher: MakeBatcher
) -> None:
    batcher = make_batcher(max_batch_size=1, max_queue_delay_ms=0)
    accepted = asyncio.ensure_future(batcher.submit(rows(1), far()))
    await started(model)
    closing = asyncio.ensure_future(batcher.close(5))
    await asyncio.sleep(0)
    with pytest.raises(UnavailableError):
        await batcher.submit(rows(2), far())
    model.gate.set()
    assert (await accepted).item() == 2
    await closing


async def test_a_preferred_batch_size_runs_without_waiting_out_the_delay(
    model: GatedModel, make_batcher: MakeBatcher
) -> None:
    model.gate.set()
    batcher = make_batcher(max_batch_size=8, max_queue_delay_ms=10000, preferred_batch_sizes=(2,))
    soon = time.monotonic() + 5
    results = await asyncio.gather(batcher.submit(rows(1), soon), batcher.submit(rows(2), soon))
    assert [r.item() for r in results] == [2, 4], "with a 10 s delay these would have expired had the batcher waited"
    assert model.batch_sizes == [2]


async def test_the_largest_preferred_size_the_queue_can_fill_is_taken(
    model: GatedModel, make_batcher: MakeBatcher
) -> None:
    batcher = make_batcher(max_batch_size=8, max_queue_delay_ms=0, preferred_batch_sizes=(2, 4))
    first = asyncio.ensure_future(batcher.submit(rows(0), far()))
    await started(model)
    waiting = [asyncio.ensure_future(batcher.submit(rows(v), far())) for v in range(1, 6)]
    await asyncio.sleep(0)
    model.gate.set()
    await asyncio.gather(first, *waiting)
    assert model.batch_sizes[:2] == [1, 4], "5 queued rows: the preferred 4 goes first"
    assert sum(model.batch_sizes) == 6


async def test_higher_priority_requests_run_first(model: GatedModel, make_batcher: MakeBatcher) -> None:
    seen: list[list[float]] = []

    def recording(parts: list[np.ndarray]) -> np.ndarray:
        seen.append(np.concatenate(parts).ravel().tolist())
        return model(parts)

    batcher = make_batcher(recording, max_batch_size=2, max_queue_delay_ms=0, priority_levels=2)
    running = asyncio.ensure_future(batcher.submit(rows(0), far(), priority=1))
    await started(model)
    low = [asyncio.ensure_future(batcher.submit(rows(v), far(), priority=2)) for v in (10, 11)]
    high = [asyncio.ensure_future(batcher.submit(rows(v), far(), priority=1)) for v in (20, 21)]
    await asyncio.sleep(0)
    model.gate.set()
    await asyncio.gather(running, *low, *high)
    assert seen == [[0], [20, 21], [10, 11]]


async def test_requests_without_priority_get_the_lowest_level_by_default(
    model: GatedModel, make_batcher: MakeBatcher
) -> None:
    model.gate.set()
    batcher = make_batcher(priority_levels=3)
    assert batcher.settings.default_priority == 3
    with pytest.raises(InvalidInputError, match=r"priority levels 1\.\.3"):
        await batcher.submit(rows(1), far(), priority=4)


async def test_two_instances_run_two_batches_at_once(make_batcher: MakeBatcher) -> None:
    running_now = 0
    peak = 0
    both_running = threading.Event()
    lock = threading.Lock()

    def concurrent(parts: list[np.ndarray]) -> np.ndarray:
        nonlocal running_now, peak
        with lock:
            running_now += 1
            peak = max(peak, running_now)
            if running_now == 2:
                both_running.set()
        both_running.wait(timeout=5)
        with lock:
            running_now -= 1
        return np.concatenate(parts)

    batcher = make_batcher(concurrent, max_batch_size=1, max_queue_delay_ms=0, instances=2)
    await asyncio.gather(batcher.submit(rows(1), far()), batcher.submit(rows(2), far()))
    assert peak == 2


def thread_recording(threads: list[int], seconds: float = 0.0) -> Callable[[list[np.ndarray]], np.ndarray]:
    """A model that notes the thread each batch runs on, taking `seconds` per batch."""

    def run(parts: list[np.ndarray]) -> np.ndarray:
        threads.append(threading.get_ident())
        time.sleep(seconds)
        return np.concatenate(parts)

    return run


async def test_fast_batches_run_on_the_event_loop_once_their_time_is_known(make_batcher: MakeBatcher) -> None:
    threads: list[int] = []
    batcher = make_batcher(thread_recording(threads), run_inline_below=1.0, max_queue_delay_ms=0)
    for value in range(4):
        assert (await batcher.submit(rows(value), far())).ravel().tolist() == [value]
    loop_thread = threading.get_ident()
    assert threads[0] != loop_thread, "the first batch has no measured time yet and runs in a worker thread"
    assert threads[1:] == [loop_thread] * 3


async def test_batches_run_on_the_instance_thread_they_are_given_which_closing_lets_end(
    make_batcher: MakeBatcher,
) -> None:
    """A version with CUDA graphs hands its batcher the one thread its graphs were captured on
    (server/session_runner.py): every batch runs there."""
    given = ThreadPoolExecutor(1, thread_name_prefix="given-instance")
    names: list[str] = []

    def run(parts: list[np.ndarray]) -> np.ndarray:
        names.append(threading.current_thread().name)
        return np.concatenate(parts) * 2

    batcher = make_batcher(run, executor=given, max_queue_delay_ms=0)
    answers = await asyncio.gather(*(batcher.submit(rows(value), far()) for value in range(6)))
    assert [answer.ravel().tolist() for answer in answers] == [[2 * value] for value in range(6)]
    assert names and all(name.startswith("given-instance") for name in names), names
    await batcher.close(1)
    with pytest.raises(RuntimeError, match="shutdown"):
        given.submit(time.monotonic)


async def test_batches_slower_than_the_inline_bound_stay_off_the_event_loop(make_batcher: MakeBatcher) -> None:
    threads: list[int] = []
    batcher = make_batcher(thread_recording(threads, seconds=0.02), run_inline_below=0.005, max_queue_delay_ms=0)
    for value in range(3):
        await batcher.submit(rows(value), far())
    assert threading.get_ident() not in threads


async def test_where_the_loop_serves_calls_too_a_quick_batch_takes_it_only_while_allowed(
    make_batcher: MakeBatcher,
) -> None:
    """A single process: `inline_when` says whether the loop has no other call to serve (a lone caller)."""
    threads: list[int] = []
    alone = [False]

    async def inline_when() -> bool:
        return alone[0]

    batcher = make_batcher(
        thread_recording(threads), run_inline_below=1.0, inline_when=inline_when, max_queue_delay_ms=0
    )
    for value in range(3):
        await batcher.submit(rows(value), far())
    loop_thread = threading.get_ident()
    assert loop_thread not in threads, "with other calls to serve, every batch runs in a worker thread"
    alone[0] = True
    for value in range(3):
        await batcher.submit(rows(value), far())
    assert threads[3:] == [loop_thread] * 3


def gated_calls(make_batcher: MakeBatcher, threads: list[int]) -> tuple[CallGate, Callable[[int], Awaitable[None]]]:
    """A single process's call gate, and a call through it of one row: the gate decides where its batch runs."""
    gate = CallGate()
    batcher = make_batcher(
        thread_recording(threads), run_inline_below=1.0, inline_when=gate.serves_one_call, max_queue_delay_ms=0
    )

    async def call(value: int) -> None:
        assert gate.arrive()
        try:
            await batcher.submit(rows(value), far())
        finally:
            gate.leave()

    return gate, call


async def test_a_single_process_runs_the_batches_of_its_only_call_on_the_loop(make_batcher: MakeBatcher) -> None:
    """The call gate of a single-process server decides: one call running is the batch's own."""
    threads: list[int] = []
    gate, call = gated_calls(make_batcher, threads)
    for value in range(3):
        await call(value)
    assert threads[1:] == [threading.get_ident()] * 2, "the first batch has no measured time yet"
    assert gate.arrive()  # another call is running: its batches and everyone's go to a worker thread
    await call(3)
    gate.leave()
    assert threads[3] != threading.get_ident()


async def test_the_gate_tells_a_front_end_whether_another_call_arrives_within_a_few_loop_turns() -> None:
    gate = CallGate()
    assert gate.arrive()
    assert not await gate.another_arrives(), "nobody else came"
    waiting = asyncio.ensure_future(gate.another_arrives())
    await asyncio.sleep(0)
    assert gate.arrive()
    assert await waiting
    assert gate.running == 2
    gate.leave()
    gate.leave()
    assert gate.running == 0


async def test_a_call_that_reaches_its_handler_while_a_lone_batch_waits_sends_that_batch_to_a_thread(
    make_batcher: MakeBatcher,
) -> None:
    """gRPC's transport hands over the calls it holds a few loop turns apart; the gate waits that long before it
    lets a lone call's batch take the loop, so that a burst is seen as one instead of as a convoy of lone calls."""
    threads: list[int] = []
    _, call = gated_calls(make_batcher, threads)
    for value in range(2):
        await call(value)
    assert threads[1] == threading.get_ident(), "a lone call's batch runs on the loop"
    loop = asyncio.get_running_loop()
    arriving: list[asyncio.Task[None]] = []
    loop.call_soon(lambda: loop.call_soon(lambda: arriving.append(loop.create_task(call(3)))))  # a few turns on
    await call(2)
    await asyncio.gather(*arriving)
    assert threads[2] != threading.get_ident(), "the next call arrived before the batch took the loop"


async def test_without_an_inline_bound_every_batch_runs_in_a_worker_thread(make_batcher: MakeBatcher) -> None:
    threads: list[int] = []
    batcher = make_batcher(thread_recording(threads), max_queue_delay_ms=0)
    for value in range(3):
        await batcher.submit(rows(value), far())
    assert threading.get_ident() not in threads


async def until(condition: Callable[[], bool]) -> None:
    """Let the batcher's task run until `condition` holds (a few loop turns; no sleeping on the clock)."""
    for _ in range(100):
        if condition():
            return
        await asyncio.sleep(0)
    raise AssertionError("the batcher never got there")


async def test_a_cancelled_request_frees_its_queue_space_at_once(model: GatedModel, make_batcher: MakeBatcher) -> None:
    batcher = make_batcher(max_batch_size=1, max_queue_size=2, max_queue_delay_ms=0)
    running = asyncio.ensure_future(batcher.submit(rows(0), far()))
    await started(model)
    staged = asyncio.ensure_future(batcher.submit(rows(1), far()))
    await until(lambda: batcher.queued_rows == 0)
    queued = asyncio.ensure_future(batcher.submit(rows(2), far()))
    leaving = asyncio.ensure_future(batcher.submit(rows(3), far()))
    await asyncio.sleep(0)
    assert batcher.queued_rows == 2
    leaving.cancel()
    await asyncio.sleep(0)
    assert batcher.queued_rows == 1
    replacement = asyncio.ensure_future(batcher.submit(rows(4), far()))
    model.gate.set()
    assert [(await f).item() for f in (running, staged, queued, replacement)] == [0, 2, 4, 8]


async def test_a_full_batch_is_staged_behind_the_running_one_and_a_partial_one_is_not(
    model: GatedModel, make_batcher: MakeBatcher
) -> None:
    batcher = make_batcher(max_batch_size=2, max_queue_delay_ms=0)
    running = asyncio.ensure_future(batcher.submit(rows(0), far()))
    await started(model)
    full = asyncio.ensure_future(batcher.submit(rows(1, 2), far()))
    await until(lambda: batcher.queued_rows == 0)
    partial = asyncio.ensure_future(batcher.submit(rows(3), far()))
    for _ in range(20):
        await asyncio.sleep(0)
    assert batcher.queued_rows == 1, "one batch at most is staged; the next keeps filling in the queue"
    more = asyncio.ensure_future(batcher.submit(rows(4), far()))
    model.gate.set()
    await asyncio.gather(running, full, partial, more)
    assert model.batch_sizes == [1, 2, 2]


async def test_a_lone_request_waits_out_the_delay_but_not_much_longer(
    model: GatedModel, make_batcher: MakeBatcher
) -> None:
    model.gate.set()
    delay = 0.2
    batcher = make_batcher(max_batch_size=8, max_queue_delay_ms=delay * 1000)
    started_at = time.monotonic()
    await batcher.submit(rows(1), far())
    waited = time.monotonic() - started_at
    assert waited >= delay * 0.95, "the delay must not fire early"
    assert waited < delay + 2.0, "generous bound: the machine is shared"


async def test_adaptive_delay_runs_a_lone_request_at_once_but_still_batches_a_burst(
    model: GatedModel, make_batcher: MakeBatcher
) -> None:
    model.gate.set()
    batcher = make_batcher(max_batch_size=8, max_queue_delay_ms=5000, adaptive_queue_delay=True)
    soon = time.monotonic() + 2
    assert (await batcher.submit(rows(1), soon)).item() == 2, "a fixed 5 s delay would have let this expire"
    burst = await asyncio.gather(*(batcher.submit(rows(v), far()) for v in range(8)))
    assert [b.item() for b in burst] == [2 * v for v in range(8)]
    assert model.batch_sizes == [1, 8]


async def test_adaptive_delay_waits_for_company_once_callers_overlap(
    model: GatedModel, make_batcher: MakeBatcher
) -> None:
    batcher = make_batcher(max_batch_size=8, max_queue_delay_ms=500, adaptive_queue_delay=True)
    for _ in range(3):  # while a batch runs, callers arrive 10 ms apart and meet in the queue: that is learned
        model.gate.clear()
        model.started.clear()
        running = asyncio.ensure_future(batcher.submit(rows(9), far()))
        await started(model)
        overlapping = []
        for value in range(4):
            overlapping.append(asyncio.ensure_future(batcher.submit(rows(value), far())))
            await asyncio.sleep(0.01)
        model.gate.set()
        await asyncio.gather(running, *overlapping)
    model.batch_sizes.clear()
    first = asyncio.ensure_future(batcher.submit(rows(1), far()))
    await asyncio.sleep(0.01)
    second = asyncio.ensure_future(batcher.submit(rows(2), far()))
    assert [(await f).item() for f in (first, second)] == [2, 4]
    assert model.batch_sizes == [2], "a caller arriving as soon as companions did before is waited for"


@pytest.mark.parametrize("company", [True, False])
async def test_adaptive_delay_waits_for_requests_their_sender_says_are_coming(
    model: GatedModel, make_batcher: MakeBatcher, company: bool
) -> None:
    """After lone requests, the next runs at once, unless its sender (a front-end with more calls accepted and not
    yet sent) says that company is coming: then the batcher waits for it, however lone the batches were."""
    model.gate.set()
    batcher = make_batcher(max_batch_size=8, max_queue_delay_ms=500, adaptive_queue_delay=True)
    for value in range(3):
        await batcher.submit(rows(value), far())
    model.batch_sizes.clear()
    await asyncio.sleep(0.05)

    def send(value: int, company: bool) -> asyncio.Future[np.ndarray]:
        return batcher.submit_nowait(rows(value), far(), 0, RequestStatistics(), lambda _: None, company)

    first = send(1, company)
    await asyncio.sleep(0.005)
    second = send(2, False)
    assert [(await f).item() for f in (first, second)] == [2, 4]
    assert model.batch_sizes == ([2] if company else [1, 1])


async def test_adaptive_delay_stops_waiting_once_a_burst_is_over(model: GatedModel, make_batcher: MakeBatcher) -> None:
    """Callers in lockstep are all in the batch already: waiting out the delay would only idle the server."""
    model.gate.set()
    batcher = make_batcher(max_batch_size=8, max_queue_delay_ms=5000, adaptive_queue_delay=True)
    for _ in range(3):
        await asyncio.gather(*(batcher.submit(rows(v), far()) for v in range(4)))
    burst_at = time.monotonic()
    await asyncio.gather(*(batcher.submit(rows(v), far()) for v in range(4)))
    assert time.monotonic() - burst_at < 2.5, "a 5 s delay was waited out although nobody else was coming"


async def test_background_rows_wait_for_every_queued_request_and_never_share_its_batch(
    model: GatedModel, make_batcher: MakeBatcher
) -> None:
    seen: list[list[float]] = []

    def recording(parts: list[np.ndarray]) -> np.ndarray:
        seen.append(np.concatenate(parts).ravel().tolist())
        return model(parts)

    batcher = make_batcher(recording, max_batch_size=8, max_queue_delay_ms=0, priority_levels=2)
    running = asyncio.ensure_future(batcher.submit(rows(0), far()))
    await started(model)
    background = asyncio.ensure_future(batcher.submit(rows(100, 101), far(), background=True))
    await asyncio.sleep(0)
    foreground = [asyncio.ensure_future(batcher.submit(rows(v), far(), priority=p)) for v, p in ((1, 2), (2, 1))]
    await asyncio.sleep(0)
    model.gate.set()
    await asyncio.gather(running, *foreground)
    assert (await background).ravel().tolist() == [200, 202]
    assert seen == [[0], [2, 1], [100, 101]], "background rows run last, in a batch of their own"


async def test_background_batches_hold_at_most_a_quarter_of_the_max_batch(
    model: GatedModel, make_batcher: MakeBatcher
) -> None:
    model.gate.set()
    batcher = make_batcher(max_batch_size=8, max_queue_delay_ms=0)
    result = await batcher.submit(rows(*range(10)), far(), background=True)
    assert result.ravel().tolist() == [2 * v for v in range(10)]
    assert batcher.background_rows == 2 and max(model.batch_sizes) <= 2 and sum(model.batch_sizes) == 10


async def test_background_rows_count_against_their_own_bound_not_the_queue(
    model: GatedModel, make_batcher: MakeBatcher
) -> None:
    batcher = make_batcher(max_batch_size=4, max_queue_size=4, max_queue_delay_ms=0)
    running = asyncio.ensure_future(batcher.submit(rows(0), far()))
    await started(model)
    background = asyncio.ensure_future(batcher.submit(rows(1, 2, 3, 4), far(), background=True))
    await asyncio.sleep(0)
    assert batcher.queued_rows == 0, "background rows must not make classifications see a full queue"
    queued = asyncio.ensure_future(batcher.submit(rows(5, 6, 7, 8), far()))
    await asyncio.sleep(0)
    with pytest.raises(QueueFullError, match="background"):
        await batcher.submit(rows(9), far(), background=True)
    model.gate.set()
    await asyncio.gather(running, background, queued)


async def test_cancelled_or_expired_background_rows_are_never_computed(
    model: GatedModel, make_batcher: MakeBatcher
) -> None:
    batcher = make_batcher(max_batch_size=4, max_queue_delay_ms=0)
    running = asyncio.ensure_future(batcher.submit(rows(0), far()))
    await started(model)
    cancelled = asyncio.ensure_future(batcher.submit(rows(5), far(), background=True))
    await asyncio.sleep(0)
    cancelled.cancel()
    with pytest.raises(DeadlineExceededError):
        await batcher.submit(rows(6), time.monotonic() + 0.05, background=True)
    model.gate.set()
    await running
    await batcher.submit(rows(1), far())
    assert model.batch_sizes == [1, 1], "neither background request may have run"


async def test_background_waits_stay_out_of_the_queue_wait_figures(
    model: GatedModel, make_batcher: MakeBatcher
) -> None:
    model.gate.set()
    records: list[BatchRecord] = []
    batcher = make_batcher(on_batch=records.append, max_batch_size=4, max_queue_delay_ms=0)
    await batcher.submit(rows(1), far(), background=True)
    await batcher.submit(rows(2), far())
    background, foreground = records
    assert (background.size, background.queue_wait_seconds) == (1, ())
    assert foreground.size == 1 and len(foreground.queue_wait_seconds) == 1
