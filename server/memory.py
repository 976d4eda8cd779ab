"""Giving the memory of retired model versions back to the operating system.

A version's ONNX Runtime session holds its graph, weights and kernel buffers in native memory. When a reload or an
unload retires a version, the session is freed (ModelVersion.unload lets go of the batcher, so nothing keeps the
version alive once the repository drops it), but glibc's allocator keeps the freed chunks in its arenas,
scattered among live ones, instead of returning them. So a server's resident memory grew with every reload and
never came back: measured on the 2-core VM, a repository reloading mnist_net 800 times in a row grew
93 → 237 MiB. `release_freed_memory` runs after every load and unload of the repository, in a single process and
in the engine (docs/benchmarks.md, "Soak"; `python -m load_tests.bench.reload_memory` measures a whole server).
"""

from __future__ import annotations

import asyncio
import ctypes
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
    """Hand the allocator's free pages back to the operating system, in a worker thread (the trim walks every
    arena). No garbage collection here: a full one took 35-60 ms of the event loop on the 2-core VM, and retired
    versions are freed without one."""
    if _TRIM is not None:
        await asyncio.to_thread(_TRIM, 0)
