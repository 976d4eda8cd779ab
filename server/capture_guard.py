"""CUDA graph captures run alone in their process.

ONNX Runtime begins a capture in CUDA's global capture mode: while it lasts, any other thread of the process that
makes a CUDA call which may synchronise (an allocation, a synchronous copy, another session's run, a session's
creation) breaks the capture. On an H200 (2026-11-28), a server with `--cuda-graphs` loading catsdogs and
mnist_net side by side lost mnist_net: "CUBLAS failure 14" in its Gemm during the capture, while catsdogs was
being created and warmed in another thread. Versions load concurrently, and serve while others load, so the
process keeps to one rule: a warm-up that captures holds the device alone, and every other use of a CUDA session
(its creation, its runs, its checks, freeing it) shares it, waiting while a capture runs or is waiting to run.
With the guard, every start of such a server over seven models loaded them all (10 starts; 3 of 4 lost models
before). A version's batches run on the thread that captured its graphs (server/session_runner.py), so no
capture happens while it serves. With CUDA graphs, a version's fp16 check runs hold the device alone too: a fresh
fp16 session's first runs broke session creations beside them (server/model.py, `_check_runs_hold_the_device`);
with that, 9 of 9 starts with `--cuda-graphs --precision fp16` loaded all seven models (4 of 18 failed before).

A capture waits for the runs under way to finish and holds new ones back until it is done (a few runs per
bucket, once per version load); a run that arrives meanwhile waits, on the event loop too when the batch was to
run there. The thread that captures passes its own shared uses through. CPU sessions never take the guard.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext


class CaptureGuard:
    """Shared use of the CUDA device, or sole use (a graph capture; with CUDA graphs, an fp16 check's runs); sole
    uses waiting go first."""

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._users = 0
        self._sole_waiting = 0
        self._sole_holder: int | None = None
        self._held = threading.local()
        """Per thread: how deep in `using_device` blocks it is (a nested one passes through: waiting there for a
        capture that waits for this thread's outer block would never end)."""

    @contextmanager
    def using_device(self) -> Iterator[None]:
        """Hold the device shared (no capture runs until the block ends). Blocks nest."""
        depth = getattr(self._held, "depth", 0)
        passing = depth > 0 or self._sole_holder == threading.get_ident()
        if not passing:
            with self._changed:
                while self._sole_holder is not None or self._sole_waiting:
                    self._changed.wait()
                self._users += 1
        self._held.depth = depth + 1
        try:
            yield
        finally:
            self._held.depth = depth
            if not passing:
                with self._changed:
                    self._users -= 1
                    if not self._users:
                        self._changed.notify_all()

    def using_device_if(self, on_cuda: bool) -> AbstractContextManager[None]:
        """`using_device` for work on a CUDA session, nothing for any other (a CPU session never takes the
        guard)."""
        return self.using_device() if on_cuda else _NOTHING_HELD

    @contextmanager
    def alone(self) -> Iterator[None]:
        """Hold the device alone: wait for every shared use and sole use under way to end, then keep new ones out
        until the block ends. Raises RuntimeError inside a `using_device` block of the same thread, which it would
        wait for forever."""
        if getattr(self._held, "depth", 0):
            raise RuntimeError("the device cannot be held alone by a thread that holds the device shared")
        with self._changed:
            self._sole_waiting += 1
            try:
                while self._sole_holder is not None or self._users:
                    self._changed.wait()
            finally:
                self._sole_waiting -= 1
            self._sole_holder = threading.get_ident()
        try:
            yield
        finally:
            with self._changed:
                self._sole_holder = None
                self._changed.notify_all()

    @property
    def users(self) -> int:
        """How many blocks hold the device shared now."""
        with self._changed:
            return self._users


_NOTHING_HELD = nullcontext()

CAPTURE_GUARD = CaptureGuard()
"""The process's one guard: every CUDA session of the process shares the device with every other."""
