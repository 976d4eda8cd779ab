"""The drain: on SIGTERM every call the server received is answered or refused with UNAVAILABLE, none CANCELLED.

Why this is more than `grpc.aio.Server.stop(grace)`: stopping the gRPC server cancels the calls its transport has
received but not yet handed to a handler, and CANCELLED is retried by no gRPC retry policy, so in a rolling update
those calls are simply lost (a burst in flight at SIGTERM lost almost all of them). So the gRPC server is stopped
only once no call can be waiting for a handler:

1. `drain`: calls accepted before it run to the end; calls that arrive from now on are *parked*, not refused
   yet: a refused client would retry at once, on this same connection, and keep the transport busy forever.
   It returns when the accepted calls finished and no call arrived for a quiet moment (every call the transport
   had received has reached a handler), or when the drain timeout ran out.
2. The server stops the gRPC server (which sends GOAWAY, so clients take new calls elsewhere), then `release`s
   the parked calls, which are refused with UNAVAILABLE while gRPC's grace period still lets them answer, and
   waits for them with `refused`.
"""

from __future__ import annotations

import asyncio
import time
from typing import NoReturn

from cnnserve.server.errors import UnavailableError

_REFUSAL = "the server is shutting down; retry the call (another replica answers it)"
_TRANSPORT_TURNS = 10
"""Turns of the event loop a lone call's batch waits for the calls gRPC's transport already holds (ten idle turns
take about 40 µs here). Bursts of 16 threaded callers after a lone one, 30 of each: with 10 turns (and with 30)
none ran as a convoy; with none, 7 and 11 of 30 did; with 3, 3 did. See `CallGate.serves_one_call`."""


class CallGate:
    """Counts the calls a server runs, and parks those that arrive while it drains.

    Used from the event loop only. `arrive` and `leave` are the hot path: a clock read and two integer updates.
    """

    def __init__(self) -> None:
        self._draining = False
        self._running = 0
        self._admitted = 0
        self._parked = 0
        self._last_arrival = time.monotonic()
        self._released = asyncio.Event()
        self._none_parked = asyncio.Event()
        self._none_parked.set()

    def arrive(self) -> bool:
        """A call arrived: True when it may run (then `leave` must follow), False when it must be `refuse`d."""
        self._last_arrival = time.monotonic()
        if self._draining:
            return False
        self._running += 1
        self._admitted += 1
        return True

    def leave(self) -> None:
        self._running -= 1

    @property
    def running(self) -> int:
        """Calls between `arrive` and `leave` now."""
        return self._running

    async def serves_one_call(self) -> bool:
        """Whether the call of a quick batch is the only one: then the batch may take the event loop, which has no
        other call to serve (server/batcher.py, `inline_when`).

        The loop turns `_TRANSPORT_TURNS` times before it answers, and says no as soon as another call arrives. grpc.aio
        hands the calls its transport holds to their handlers one at a time, each after a turn of its poller thread and
        a few of the loop. Answering at once would hide them. A burst of concurrent callers could then run as a convoy:
        every call would find itself alone and take the loop for its own batch, and the next call would reach its
        handler only after that. The batches held one call each, at about 70% of the throughput the burst got once
        batched, often for the whole of a 160-call burst (measured on 2 cores, 16 threads calling at once after 50 calls
        of a lone caller). A batch that goes to a worker thread instead lets the next calls arrive while it computes,
        and from then on they batch. The turns cost a lone caller 1-2% (mnist_net, 6 alternating rounds, medians of the
        per-round ratios: p50 1.01x, p99 1.02x); a worker thread for every lone batch cost it 11% at p50 and 21% at p99.
        """
        if self._running > 1:
            return False
        return not await self.another_arrives() and self._running <= 1

    async def another_arrives(self) -> bool:
        """Whether another call is let in within `_TRANSPORT_TURNS` turns of the event loop (returns as soon as one
        is): the wait that lets calls gRPC's transport already holds reach their handlers, before a lone call's
        batch takes the loop (`serves_one_call`) or before a front-end sends a request it knows of no company for
        (server/engine_client.py, `count_calls_with`)."""
        seen = self._admitted
        for _ in range(_TRANSPORT_TURNS):
            await asyncio.sleep(0)
            if self._admitted != seen:
                return True
        return False

    async def refuse(self) -> NoReturn:
        """Wait until parked calls are released, then raise UnavailableError."""
        self._parked += 1
        self._none_parked.clear()
        try:
            await self._released.wait()
        finally:
            self._parked -= 1
            if self._parked == 0:
                self._none_parked.set()
        raise UnavailableError(_REFUSAL)

    async def drain(self, timeout: float, quiet: float = 0.1) -> bool:
        """Park new calls from now on; wait until running calls finished and none arrived for `quiet` seconds.

        Returns False when `timeout` ran out first (calls may still be running or queued).
        """
        self._draining = True
        deadline = time.monotonic() + timeout
        while True:
            now = time.monotonic()
            if self._running == 0 and now - self._last_arrival >= quiet:
                return True
            if now >= deadline:
                return False
            await asyncio.sleep(min(quiet / 2, deadline - now))

    def release(self) -> None:
        """Refuse every parked call (and every later one) with UNAVAILABLE."""
        self._released.set()

    async def refused(self, timeout: float) -> bool:
        """Wait until every parked call has been refused; False when `timeout` ran out first."""
        try:
            await asyncio.wait_for(self._none_parked.wait(), timeout)
        except TimeoutError:
            return False
        return True
