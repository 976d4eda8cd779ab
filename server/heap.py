"""The garbage collector of a server process, set for a request path that allocates briskly.

CPython collects its young generation after 700 net allocations of container objects, and its whole heap after
every hundred of those. A server process keeps tens of thousands of objects for as long as it runs (protobuf
descriptors, numpy, ONNX Runtime's bindings, the models' specifications); each call in flight holds a few dozen
more; and grpc.aio leaves about six objects of cyclic garbage behind per call (its handler lookup's closure and
call details), which only the collector frees. Measured under h2load (docs/benchmarks.md, "The garbage
collector"), a serving process collected its young generation every 17-20 calls and its whole heap, 55,000-63,000
objects, every 2,000-2,500 calls, 20 ms each time: 15-23 µs of its event loop per call, and every call in flight
stalled 20 ms each time.

So once a process has started (models loaded, port bound), `settle_heap` collects once, freezes what is alive
(`gc.freeze`: the permanent generation, which no collection traverses again) and collects the young generation
only every `gc_young_threshold` net allocations: the collector's share fell to 1.5-2.6 µs a call. The price:
an object made during start that later becomes part of a reference cycle is never freed (a model version loaded
at start frees by reference counting when it is replaced or unloaded: `ModelVersion` breaks its one cycle), and
cyclic garbage waits longer to be freed (a few thousand small objects at most).
"""

from __future__ import annotations

import gc
import logging

_log = logging.getLogger(__name__)


def settle_heap(young_threshold: int) -> None:
    """Freeze what the process made while starting and collect its young generation every `young_threshold` net
    allocations (0: leave the collector as Python sets it). Call once, when the process has started."""
    if young_threshold <= 0:
        return
    gc.collect()
    gc.freeze()
    _, middle, oldest = gc.get_threshold()
    gc.set_threshold(young_threshold, middle, oldest)
    _log.debug("heap settled: %d objects frozen, gc thresholds %s", gc.get_freeze_count(), gc.get_threshold())
