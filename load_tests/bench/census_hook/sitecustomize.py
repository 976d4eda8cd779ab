"""Counts where a process's asyncio event loop spends its time, for load_tests.bench.loop_census.

Python imports this module at start-up when its folder is first on PYTHONPATH; it does nothing unless
CNNSERVE_LOOP_CENSUS_DIR names a folder. Then it wraps three places of asyncio, in this process only: each turn of
the loop (`BaseEventLoop._run_once`), each callback the loop runs (`Handle._run`: a task's step is counted under its
coroutine's name, any other callback under its own) and the selector's wait for events (the time the loop was idle
or waiting for the kernel), and it times the garbage collector's collections by generation (`gc.callbacks`: they run
in whichever thread allocates, mostly the loop's) and reports its thresholds and frozen objects (server/heap.py). On
SIGUSR2 it writes the running totals to `<dir>/<pid>.json`, replacing the last ones in one rename. The wrappers cost
each callback two clock readings and a dictionary update (about a microsecond), the same in every process measured,
so figures compare between processes of one run and not with runs without it.
"""

from __future__ import annotations

import asyncio.base_events
import asyncio.events
import gc
import json
import os
import selectors
import signal
import time
from pathlib import Path
from typing import Any

_DIRECTORY = os.environ.get("CNNSERVE_LOOP_CENSUS_DIR")


def _install(directory: Path) -> None:
    clock = time.perf_counter
    totals: dict[str, Any] = {"turns": 0, "select_seconds": 0.0, "snapshots": 0}
    callbacks: dict[str, list[float]] = {}

    run_once = asyncio.base_events.BaseEventLoop._run_once

    def counting_turns(loop: asyncio.base_events.BaseEventLoop) -> None:
        totals["turns"] += 1
        run_once(loop)

    handle_run = asyncio.events.Handle._run

    def timing_callbacks(handle: asyncio.events.Handle) -> None:
        started = clock()
        try:
            handle_run(handle)
        finally:
            spent = clock() - started
            name = _callback_name(handle._callback)
            entry = callbacks.get(name)
            if entry is None:
                callbacks[name] = [1, spent]
            else:
                entry[0] += 1
                entry[1] += spent

    select = selectors.DefaultSelector.select

    def timing_select(selector: selectors.BaseSelector, timeout: float | None = None) -> Any:
        started = clock()
        try:
            return select(selector, timeout)
        finally:
            totals["select_seconds"] += clock() - started

    collections = [0, 0, 0]
    collecting = [0.0, 0.0, 0.0]
    collection_started = [0.0]

    def timing_collections(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            collection_started[0] = clock()
        else:
            generation = info["generation"]
            collections[generation] += 1
            collecting[generation] += clock() - collection_started[0]

    def write(signum: int, frame: object) -> None:
        totals["snapshots"] += 1
        figures = {
            **totals,
            "callbacks": {name: list(entry) for name, entry in callbacks.items()},
            "gc": {
                "collections": collections,
                "seconds": collecting,
                "threshold": gc.get_threshold(),
                "frozen": gc.get_freeze_count(),
            },
        }
        partial = directory / f"{os.getpid()}.json.partial"
        partial.write_text(json.dumps(figures))
        os.replace(partial, directory / f"{os.getpid()}.json")

    asyncio.base_events.BaseEventLoop._run_once = counting_turns  # type: ignore[method-assign]
    asyncio.events.Handle._run = timing_callbacks  # type: ignore[method-assign]
    selectors.DefaultSelector.select = timing_select  # type: ignore[method-assign]
    gc.callbacks.append(timing_collections)
    signal.signal(signal.SIGUSR2, write)


def _callback_name(callback: object) -> str:
    """A task's step by its coroutine's qualified name ("task:..."), any other callback by its own."""
    owner = getattr(callback, "__self__", None)
    if owner is not None and hasattr(owner, "get_coro"):
        coroutine = owner.get_coro()
        return "task:" + str(getattr(coroutine, "__qualname__", None) or type(coroutine).__name__)
    return str(getattr(callback, "__qualname__", None) or type(callback).__name__)


if _DIRECTORY:
    _install(Path(_DIRECTORY))
