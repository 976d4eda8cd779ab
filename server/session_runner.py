"""How a batch goes through a version's ONNX Runtime session.

A batch is first cast to the input's element type (the Open Inference Protocol sends float32 to uint8 models too)
and padded with zero rows up to the size the session runs it at: the smallest of the batch buckets that holds it,
or the graph's fixed batch size. The padding's output rows are dropped here, so no caller ever sees them. Then
one of two ways, chosen at load (`RunPlan`):

- `session.run` with the batch as a numpy array (`io_binding` off): ONNX Runtime copies it to the device and
  allocates every output afresh on each call;
- IO binding (the default): each instance keeps, per batch size, an input and an output buffer on the session's
  device, bound to the session once. For the CPU provider they are views of one host array pair as large as the
  largest batch, so every size stays bound at no extra memory; for CUDA they are GPU memory of their own, one
  pair per bucket (on CUDA a version always has buckets: max_batch_size alone when none are given, see
  `resolve_plan`). A batch is copied into its size's input buffer, the session writes the classifier output (and
  computes nothing else) into the output buffer, and only the rows asked for are copied back. The CPU provider
  runs the very same code, so it is tested without a GPU.

With CUDA graphs, every batch runs at a bucket's size, and each bucket's run is captured as a CUDA graph during
warm-up (ONNX Runtime captures a graph id's run after a few ordinary ones) and replayed from then on: one launch
instead of one per kernel. A replayed graph reads and writes the very addresses it was captured with, which the
kept buffers guarantee. ONNX Runtime also keeps each capture in the context of the thread that made it (its CUDA
provider's `PerThreadContext`): a run of the same graph id from another thread starts over there, with ordinary
runs and then a capture of its own, in the middle of serving, where another version's use of the device breaks it
(server/capture_guard.py). So a version with CUDA graphs runs every bound call, warm-up and batches alike, on one
thread of its own (`SessionRunner.graph_thread`), which its batcher uses as its instance.
"""

from __future__ import annotations

import itertools
import queue
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import onnxruntime as ort

from cnnserve.metadata import InputType
from cnnserve.server.capture_guard import CAPTURE_GUARD
from cnnserve.server.errors import ModelLoadError
from cnnserve.server.model_spec import ModelSpec
from cnnserve.server.runtime import CUDA
from cnnserve.server.settings import BatchingSettings, RuntimeSettings, cuda_graph_conflicts

SHAPE_CHANGE_WARNING = "a change of batch shape costs"
"""How a version's warning of costly changes of shape begins (server/model.py; the GPU check finds it in logs)."""
SHAPE_CHANGE_TRIES = 3
"""Runs of each kind when `SessionRunner.shape_change_cost` times a change of shape; the quickest counts."""
CAPTURE_RUNS = 3
"""Warm-up runs per bucket with CUDA graphs: ONNX Runtime runs a graph id normally before it captures it (its
allocations must settle first), then replays it."""

_T = TypeVar("_T")


@dataclass(frozen=True)
class RunPlan:
    """How a version's batches run, as resolved at load from its settings and the provider it got."""

    io_binding: bool = True
    buckets: tuple[int, ...] = ()
    """Ascending sizes a batch is padded up to; empty: each batch runs at its own size."""
    cuda_graphs: bool = False
    device: str = "cpu"
    """Where the IO-bound buffers live, as ONNX Runtime names devices: "cpu" or "cuda"."""
    device_id: int = 0

    def size_for(self, rows: int) -> int:
        """The size a batch of `rows` runs at."""
        for bucket in self.buckets:
            if bucket >= rows:
                return bucket
        return rows


def resolve_plan(
    batching: BatchingSettings, runtime: RuntimeSettings, provider: str, fixed_batch: int | None
) -> RunPlan:
    """The run plan of a version on `provider`; `fixed_batch` is the graph's batch dimension when fixed.

    A fixed batch dimension is the one bucket there can be. CUDA graphs apply only on CUDA (a version that fell
    back to the CPU runs without them). On CUDA, buckets default to max_batch_size alone: every batch runs at one
    shape. A CUDA session whose input shape changes chooses its cuDNN convolution algorithms again at that run:
    on an H200, mnist_net's run took 0.18 ms at one shape and 23-33 ms (exhaustive search; 4-6 ms heuristic)
    when each batch's bucket differed from the last, and under load batches come in every size. Padding to the
    largest costs a small model nothing (mnist_net's run takes 0.11 ms there at one row and at 32)
    and catsdogs about 0.85 ms for a lone image (1.05 ms at 32 rows against 0.2 ms at one), far less than one
    change of shape. `batch_buckets` gives several shapes where a large model's lone callers are worth the
    changes (docs/gpu.md). One shape also keeps a single pair of GPU buffers per instance with IO binding.
    Raises ModelLoadError when CUDA graphs are asked for with settings they cannot work with.
    """
    on_cuda = provider == CUDA
    graphs = runtime.cuda_graphs and on_cuda
    buckets = batching.batch_buckets
    if fixed_batch is not None:
        buckets = (fixed_batch,)
    elif on_cuda and not buckets:
        buckets = (batching.max_batch_size,)
    if graphs:
        conflict = cuda_graph_conflicts(batching.instances, runtime.io_binding)
        if conflict:
            raise ModelLoadError(conflict)
    return RunPlan(runtime.io_binding, buckets, graphs, "cuda" if on_cuda else "cpu", runtime.cuda_device_id)


def warm_up_sizes(plan: RunPlan, batching: BatchingSettings) -> set[int]:
    """The batch sizes to run before a version serves: with buckets (always on CUDA), every bucket, the only sizes
    the session sees; on the CPU, which keeps no per-shape state worth warming, the sizes the batcher forms most
    (1, the preferred sizes, the largest)."""
    if plan.buckets:
        return set(plan.buckets)
    return {1, *batching.preferred_batch_sizes, batching.max_batch_size}


def plain_runner(session: ort.InferenceSession, spec: ModelSpec) -> SessionRunner:
    """A runner of plain session calls, padding only to a fixed batch dimension: for checks made at load and
    import, outside serving."""
    fixed = spec.batch_dim
    return SessionRunner(session, spec, RunPlan(io_binding=False, buckets=(fixed,) if fixed else ()), 1)


@dataclass(frozen=True)
class ShapeChangeCost:
    """The largest bucket's run repeated, and right after another shape, in seconds."""

    repeated: float
    after_a_change: float

    def is_costly(self) -> bool:
        """Whether a change of shape costs far more than the run itself (on CUDA, cuDNN choosing its convolution
        algorithms again): over a millisecond more, and over four times the repeated run."""
        extra = self.after_a_change - self.repeated
        return extra > 1e-3 and self.after_a_change > 4 * self.repeated


@dataclass(frozen=True)
class _Io:
    """What the kept buffers are made for: the input's name, element type and per-image shape, and the classifier
    output's name and width."""

    input: str
    dtype: np.dtype
    item_shape: tuple[int, ...]
    output: str
    width: int


class SessionRunner:
    """Runs batches of model input through one session as its `RunPlan` says. Thread-safe: with IO binding, each
    call takes a set of buffers from a pool made with one per instance. A call that finds none free (in the
    engine, a batch run on the event loop beside one in a worker thread) makes another, which then stays in the
    pool; with CUDA graphs, whose captures belong to their buffers, it waits for one instead.

    Every call into a CUDA session shares the device through the process's `CAPTURE_GUARD`, and a warm-up that
    captures CUDA graphs holds it alone (server/capture_guard.py says why). With CUDA graphs, bound calls (batches
    and the warm-up) run on `graph_thread`, whichever thread makes them: the thread that captured a graph is the
    only one that replays it (see the module docstring)."""

    def __init__(self, session: ort.InferenceSession, spec: ModelSpec, plan: RunPlan, instances: int) -> None:
        self.plan = plan
        self._session = session
        self._io = _Io(
            input=spec.input_name,
            dtype=np.dtype(np.uint8 if spec.preprocessing.dtype is InputType.UINT8 else np.float32),
            item_shape=tuple(spec.preprocessing.input_shape),
            output=spec.output_name or session.get_outputs()[0].name,
            width=spec.metadata.output_width,
        )
        self._labels = len(spec.metadata.labels)
        self._output_kind = spec.metadata.output_kind
        # Plain calls (a numpy feed, at no fixed address) must never be captured into a CUDA graph, the fp16 check's
        # and Explain's included; graph id -1 says so, and sessions without CUDA graphs ignore it.
        self._plain_options = ort.RunOptions()
        self._plain_options.add_run_config_entry("gpu_graph_id", "-1")
        self._on_cuda = session.get_providers()[0] == CUDA
        self._free: queue.SimpleQueue[_BoundBuffers] = queue.SimpleQueue()
        if plan.io_binding:
            for _ in range(instances):
                self._free.put(self._new_buffers())
        self.graph_thread: ThreadPoolExecutor | None = None
        """With CUDA graphs: the one thread that captures and replays them (a batcher runs its batches there)."""
        self._graph_thread_id: int | None = None
        if plan.cuda_graphs:
            self.graph_thread = ThreadPoolExecutor(1, thread_name_prefix="cuda-graphs")
            self._graph_thread_id = self.graph_thread.submit(threading.get_ident).result()

    def close(self) -> None:
        """Let the graph thread end (at once if idle; after its call otherwise). The session itself is the caller's
        to free."""
        if self.graph_thread is not None:
            self.graph_thread.shutdown(wait=False, cancel_futures=True)

    def run(self, batch: np.ndarray) -> np.ndarray:
        """The classifier output, one row per row of `batch` (the padding's rows dropped)."""
        return self.run_parts([batch])

    def run_parts(self, parts: list[np.ndarray]) -> np.ndarray:
        """The classifier output for the batch that is the concatenation of `parts` (the inputs of the requests
        batched together), one row per row. With IO binding, the parts are copied straight into the kept input
        buffer: one copy of each image on the host, where concatenating first would make two."""
        if self._away_from_graph_thread():
            return self._on_graph_thread(self.run_parts, parts)
        if self._on_cuda:
            with CAPTURE_GUARD.using_device():
                return self._run_parts(parts)
        return self._run_parts(parts)

    def _away_from_graph_thread(self) -> bool:
        """Whether this runner has a graph thread and the caller is on another thread (without one, never)."""
        return self._graph_thread_id is not None and threading.get_ident() != self._graph_thread_id

    def _on_graph_thread(self, call: Callable[..., _T], *args: object) -> _T:
        """`call(*args)` on the graph thread, for a caller on any other thread (it waits for the answer)."""
        assert self.graph_thread is not None
        return self.graph_thread.submit(call, *args).result()

    def _run_parts(self, parts: list[np.ndarray]) -> np.ndarray:
        parts = [self._as_input_type(part) for part in parts]
        rows = sum(len(part) for part in parts)
        size = self.plan.size_for(rows)
        if not self.plan.io_binding:
            batch = parts[0] if len(parts) == 1 else np.concatenate(parts)
            feed = {self._io.input: self._padded(batch, size)}
            return self._session.run([self._io.output], feed, self._plain_options)[0][:rows]
        try:
            buffers = self._free.get(block=self.plan.cuda_graphs)
        except queue.Empty:
            buffers = self._new_buffers()
        try:
            return buffers.run(parts, rows, size)
        finally:
            self._free.put(buffers)

    def run_all(self, images: np.ndarray) -> np.ndarray:
        """`run` over any number of images, in slices the graph takes (its fixed batch size, if it has one)."""
        step = self.plan.buckets[-1] if self.plan.buckets else len(images)
        return np.concatenate([self.run(images[start : start + step]) for start in range(0, len(images), step)])

    def run_output(self, batch: np.ndarray, output: str) -> np.ndarray:
        """The graph output `output` (a layer's activations, for Explain) for `batch`, by a plain session call:
        rare, and of shapes the kept buffers are not made for."""
        rows = len(batch)
        batch = self._padded(self._as_input_type(batch), self.plan.size_for(rows))
        with CAPTURE_GUARD.using_device_if(self._on_cuda):
            return self._session.run([output], {self._io.input: batch}, self._plain_options)[0][:rows]

    def warm_up(self, sizes: Iterable[int]) -> tuple[int, ...]:
        """Run each of `sizes` (see `warm_up_sizes`) before the version serves, so that no caller pays for the
        first allocation, cuDNN's algorithm search or a graph capture; returns the sizes run, ascending. With
        buckets those are every bucket, whatever `sizes` says. Raises ModelLoadError when the output is not one
        row per image and one column per label (a graph with open dimensions says so only now)."""
        if self._away_from_graph_thread():
            return self._on_graph_thread(self.warm_up, sizes)
        run_sizes = self.plan.buckets or tuple(sorted(set(sizes)))
        repeats = CAPTURE_RUNS if self.plan.cuda_graphs else 1
        with CAPTURE_GUARD.alone() if self.plan.cuda_graphs else nullcontext():  # a capture runs alone
            for size in run_sizes:
                for _ in range(repeats):
                    outputs = self.run(np.zeros((size, *self._io.item_shape), self._io.dtype))
                if outputs.shape != (size, self._io.width):
                    raise ModelLoadError(
                        f"a warm-up batch of {size} returned shape {list(outputs.shape)}, expected [{size}, "
                        f"{self._io.width}] ({self._labels} labels, {self._output_kind.value} out)"
                    )
        return run_sizes

    def shape_change_cost(self) -> ShapeChangeCost | None:
        """What a change of input shape costs this session, measured on warmed buckets: the largest bucket's run
        repeated, against the same run right after the smallest bucket's, the quickest of SHAPE_CHANGE_TRIES each
        (a change costs every time; a hiccup of the machine does not). None with fewer than two buckets or with
        CUDA graphs (a replayed graph redoes no per-shape work). A few runs; call it after `warm_up`."""
        buckets = self.plan.buckets
        if len(buckets) < 2 or self.plan.cuda_graphs:
            return None
        smallest, largest = (
            np.zeros((size, *self._io.item_shape), self._io.dtype) for size in (buckets[0], buckets[-1])
        )
        repeated, changed = [], []
        self.run(largest)
        for _ in range(SHAPE_CHANGE_TRIES):
            started = time.perf_counter()
            self.run(largest)
            repeated.append(time.perf_counter() - started)
            self.run(smallest)
            started = time.perf_counter()
            self.run(largest)
            changed.append(time.perf_counter() - started)
        return ShapeChangeCost(min(repeated), min(changed))

    def _new_buffers(self) -> _BoundBuffers:
        return _BoundBuffers(self._session, self._io, self.plan)

    def _as_input_type(self, batch: np.ndarray) -> np.ndarray:
        dtype = self._io.dtype
        if batch.dtype == dtype:
            return batch
        if dtype == np.uint8:
            return np.clip(np.rint(batch), 0, 255).astype(np.uint8)
        return batch.astype(dtype)

    def _padded(self, batch: np.ndarray, size: int) -> np.ndarray:
        rows = len(batch)
        if rows == size:
            return batch
        return np.concatenate([batch, np.zeros((size - rows, *batch.shape[1:]), batch.dtype)])


class _BoundBuffers:
    """One instance's IO bindings, one per batch size: an input and an output buffer on the session's device,
    bound once, so a run only copies the batch in and the answer out (and a CUDA graph finds the addresses it was
    captured with).

    On the CPU every size's buffers are the leading rows of one input and one output array (regrown to at least
    twice the size, and the bindings made again, when a larger batch comes), so all sizes stay bound: batches of
    many different sizes (1 to `max_batch_size` under load) never make buffers afresh. On CUDA each size has
    memory of its own, made at its first run (the warm-up's, for every bucket) and kept."""

    def __init__(self, session: ort.InferenceSession, io: _Io, plan: RunPlan) -> None:
        self._session = session
        self._io = io
        self._plan = plan
        self._by_size: dict[int, _Binding] = {}
        self._host: tuple[np.ndarray, np.ndarray] | None = None
        """CPU only: the input and output arrays whose leading rows every size's binding uses."""
        self._graph_ids = itertools.count(1)
        """Each binding's CUDA graph id, never reused (a replay must find the buffers its capture used); 0 is
        ONNX Runtime's own."""

    @property
    def bound_sizes(self) -> tuple[int, ...]:
        return tuple(self._by_size)

    def run(self, parts: list[np.ndarray], rows: int, size: int) -> np.ndarray:
        binding = self._by_size.get(size)
        if binding is None:
            binding = self._bind(size)
        return binding.run(parts, rows)

    def _bind(self, size: int) -> _Binding:
        io = self._io
        if self._plan.device == "cpu":
            if self._host is None or len(self._host[0]) < size:
                rows = max(size, 2 * len(self._host[0])) if self._host is not None else size
                self._host = (np.zeros((rows, *io.item_shape), io.dtype), np.empty((rows, io.width), np.float32))
                self._by_size.clear()
            inputs, outputs = self._host
            binding = _Binding.on_host(self._session, io, inputs[:size], outputs[:size])
        else:
            binding = _Binding.on_device(self._session, io, self._plan, size, next(self._graph_ids))
        self._by_size[size] = binding
        return binding


class _Binding:
    """The buffers and IO binding of one batch size. On the CPU, the buffers are numpy arrays that ONNX Runtime
    reads and writes in place; on CUDA, GPU memory filled from a host staging array."""

    def __init__(
        self,
        session: ort.InferenceSession,
        io: _Io,
        staging: np.ndarray,
        outputs: np.ndarray | None,
        values: tuple[ort.OrtValue, ort.OrtValue],
        run_options: ort.RunOptions | None = None,
    ) -> None:
        self._session = session
        self._staging = staging
        self._outputs = outputs
        self._input_value, self._output_value = values
        self._binding = session.io_binding()
        self._binding.bind_ortvalue_input(io.input, self._input_value)
        self._binding.bind_ortvalue_output(io.output, self._output_value)
        self._run_options = run_options

    @classmethod
    def on_host(cls, session: ort.InferenceSession, io: _Io, staging: np.ndarray, outputs: np.ndarray) -> _Binding:
        """Bound to `staging` and `outputs` themselves (C-contiguous: views of leading rows are)."""
        values = (ort.OrtValue.ortvalue_from_numpy(staging), ort.OrtValue.ortvalue_from_numpy(outputs))
        return cls(session, io, staging, outputs, values)

    @classmethod
    def on_device(cls, session: ort.InferenceSession, io: _Io, plan: RunPlan, size: int, graph_id: int) -> _Binding:
        input_shape = (size, *io.item_shape)
        make = ort.OrtValue.ortvalue_from_shape_and_type
        values = (
            make(input_shape, io.dtype, plan.device, plan.device_id),
            make((size, io.width), np.float32, plan.device, plan.device_id),
        )
        run_options = None
        if plan.cuda_graphs:
            run_options = ort.RunOptions()
            run_options.add_run_config_entry("gpu_graph_id", str(graph_id))
        return cls(session, io, np.zeros(input_shape, io.dtype), None, values, run_options)

    def run(self, parts: list[np.ndarray], rows: int) -> np.ndarray:
        staging = self._staging
        on_device = self._outputs is None
        if len(parts) == 1 and rows == len(staging) and on_device:
            self._input_value.update_inplace(np.ascontiguousarray(parts[0]))
        else:
            offset = 0
            for part in parts:
                staging[offset : offset + len(part)] = part
                offset += len(part)
            staging[rows:] = 0
            if on_device:
                self._input_value.update_inplace(staging)
        self._session.run_with_iobinding(self._binding, self._run_options)
        if self._outputs is not None:
            return self._outputs[:rows].copy()
        return self._output_value.numpy()[:rows]
