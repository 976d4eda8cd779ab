"""Giving the memory of retired model versions back to the operating system.

A version's ONNX Runtime session holds its graph, weights and kernel buffers in native memory. A retired version
(replaced by a reload, or unloaded) is freed only by Python's cycle collector, because the version and its
batcher refer to each other, and glibc's allocator then keeps the freed chunks in its arenas, scattered among live
ones, instead of returning them. So a server's resident memory grew with every reload and never came back:
measured on the 2-core VM, a repository reloading mnist_net 800 times in a row grew 93 → 237 MiB, and stayed at
92-94 MiB with `release_freed_memory` after each reload (docs/benchmarks.md, "Soak";
`python -m load_tests.bench.reload_memory` measures a whole server). It runs after every load and unload of the
repository, in a single process and in the engine.
"""

from __future__ import annotations

import asyncio
import ctypes
import gc
from collections.abc import Callable


def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's malloc_trim, or None where the C library has none (musl, macOS)."""
    try:
        own_symbols = ctypes.CDLL(None)
    except OSError:  # pragma: no cover - a platform without dlopen(NULL)
        return None
    return getattr(own_symbols, "malloc_trim", None)


_TRIM = _malloc_trim()


async def release_freed_memory() -> None:
    """Free retired versions now (a full collection: they live in reference cycles), then hand the allocator's
    free pages back to the operating system. The trim walks every arena, so it runs in a worker thread; the
    collection takes a few milliseconds of the event loop, once per load or unload."""
    gc.collect()
    if _TRIM is not None:
        await asyncio.to_thread(_TRIM, 0)
