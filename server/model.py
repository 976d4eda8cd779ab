"""One loaded model version: its session, its specification, its preprocessor and its batcher.

The specification (server/model_spec.py) comes from the graph, the metadata our exporter embeds, the model's
config.toml and labels.txt, so a model written by any tool serves like one of ours once it is specified.
"""

from __future__ import annotations

import asyncio
import logging
import time
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

import numpy as np

from cnnserve.metadata import ModelMetadata
from cnnserve.repository_layout import MODEL_FILE
from cnnserve.server.batcher import BatchRecord, DynamicBatcher, InlineWhen, OnDone
from cnnserve.server.capture_guard import CAPTURE_GUARD
from cnnserve.server.errors import ExecutionProviderError, UnavailableError
from cnnserve.server.metrics import ServerMetrics
from cnnserve.server.model_config import ModelConfig
from cnnserve.server.model_spec import ModelSpec, load_spec
from cnnserve.server.postprocess import to_probabilities
from cnnserve.server.precision import Fp16Agreement, check_images, compare_top1, fp16_model, refuse_if_disagreeing
from cnnserve.server.preprocess import ImagePreprocessor
from cnnserve.server.runtime import CUDA, LoadedSession, create_session
from cnnserve.server.session_runner import (
    SHAPE_CHANGE_WARNING,
    RunPlan,
    SessionRunner,
    plain_runner,
    resolve_plan,
    warm_up_sizes,
)
from cnnserve.server.settings import BatchingSettings, Precision, RuntimeSettings, ServerSettings
from cnnserve.server.statistics import ModelStatistics, RequestStatistics, current_request

_log = logging.getLogger(__name__)
INLINE_BATCH_SECONDS = 0.001
"""Batches that take less than this on average may run on the event loop's thread (see server/batcher.py): always
in the engine of a multi-process server, whose loop only feeds the batchers, and for a lone call in a single
process. So that is about the longest one batch holds up the loop's other work."""


@dataclass(frozen=True)
class RunInfo:
    """How a loaded version's batches really run, for GetModel: what its settings asked for, as resolved on the
    provider it got (its precision is its settings': an fp16 version that failed its check is not loaded)."""

    plan: RunPlan
    warmed_sizes: tuple[int, ...]
    """The batch sizes run before the version was READY (every bucket, with buckets)."""
    fp16_agreement: Fp16Agreement | None = None
    """With fp16: how its top-1 labels compared with float32's at load."""


class ModelState(StrEnum):
    LOADING = "LOADING"
    READY = "READY"
    UNAVAILABLE = "UNAVAILABLE"
    FAILED = "FAILED"


@dataclass
class ModelVersion:
    """A version of a model and everything needed to serve it. Built by `load`, served once READY."""

    name: str
    version: int
    path: Path
    state: ModelState = ModelState.LOADING
    reason: str = ""
    metadata: ModelMetadata | None = None
    spec: ModelSpec | None = None
    loaded: LoadedSession | None = None
    preprocessor: ImagePreprocessor | None = None
    batcher: DynamicBatcher | None = None
    batching: BatchingSettings | None = None
    runtime: RuntimeSettings | None = None
    runner: SessionRunner | None = None
    run_info: RunInfo | None = None
    statistics: ModelStatistics = field(default_factory=ModelStatistics)
    load_seconds: float = 0.0
    provider: str = ""
    """The execution provider the session runs on, as it reports it; empty until loaded."""
    fallback_reason: str = ""
    """Why the version runs on the CPU although CUDA was wanted; empty otherwise."""

    @property
    def ready(self) -> bool:
        return self.state is ModelState.READY

    async def load(
        self,
        config: ModelConfig,
        server: ServerSettings,
        metrics: ServerMetrics,
        inline_when: InlineWhen | None = None,
    ) -> None:
        """Create the session off the event loop, resolve the specification and the settings, warm up, start
        batching. Quick batches run on the event loop when `await inline_when()` says so (the engine: always; a single
        process: for a lone call; server/batcher.py), in worker threads always without it.

        Never raises for a bad model: the version is left FAILED with the reason, so one broken file cannot take
        the other models down. Raises ExecutionProviderError when CUDA was required and is not usable, because
        then the server must refuse to start.
        """
        started = time.monotonic()
        try:
            self.runtime = runtime = config.runtime(server)
            model_file = self.path / MODEL_FILE
            self.loaded = await asyncio.to_thread(create_session, model_file, runtime)
            self.provider, self.fallback_reason = self.loaded.provider, self.loaded.fallback_reason
            self.spec = await asyncio.to_thread(load_spec, self.loaded.session, model_file, config, self.name)
            self.metadata = self.spec.metadata
            self.batching = batching = config.batching(server, self.spec.batch_dim)
            self.preprocessor = ImagePreprocessor(self.metadata.preprocessing, server.max_image_pixels)
            agreement = None
            if runtime.precision is Precision.FP16:
                agreement = await asyncio.to_thread(self._switch_to_fp16, model_file, runtime)
            plan = resolve_plan(batching, runtime, self.loaded.provider, self.spec.batch_dim)
            self.runner = SessionRunner(self.loaded.session, self.spec, plan, batching.instances)
            warmed = await asyncio.to_thread(self.runner.warm_up, warm_up_sizes(plan, batching))
            self.run_info = RunInfo(plan, warmed, agreement)
            if plan.device == "cuda":
                await asyncio.to_thread(self._warn_of_costly_shape_changes)
        except ExecutionProviderError:
            raise
        except Exception as exc:
            failure = f"{exc.__class__.__name__}: {exc}"
        else:
            failure = ""
        if failure:
            self.state, self.reason = ModelState.FAILED, failure
            # Out of the except block: the exception's traceback keeps the runner, and so the session, alive.
            await asyncio.to_thread(self._let_go_of_the_session)
            _log.error("model %s version %d failed to load: %s", self.name, self.version, self.reason)
            metrics.model_load_failed(self.name)
            return
        # With CUDA graphs every batch runs on the thread that captured them, never inline on the event loop.
        graph_thread = self.runner.graph_thread
        self.batcher = DynamicBatcher(
            self._run,
            batching,
            name=self.name,
            on_batch=lambda record: self._on_batch(record, metrics),
            run_output=self._run_output,
            finish_batch=self._probabilities,
            run_inline_below=INLINE_BATCH_SECONDS if inline_when is not None and graph_thread is None else 0.0,
            inline_when=inline_when,
            executor=graph_thread,
        )
        self.batcher.start()
        self.load_seconds = time.monotonic() - started
        self.state = ModelState.READY
        metrics.model_loaded(self)
        plan = self.runner.plan
        _log.info(
            "model %s version %d ready on %s in %.2fs (batch up to %d, delay %.1f ms; %s, %s%s%s)",
            self.name,
            self.version,
            self.provider,
            self.load_seconds,
            batching.max_batch_size,
            batching.max_queue_delay_ms,
            self.runtime.precision.value,
            "IO binding" if plan.io_binding else "plain runs",
            f", buckets {list(plan.buckets)}" if plan.buckets else "",
            ", CUDA graphs" if plan.cuda_graphs else "",
        )

    def refuse_if_full(self, rows: int) -> None:
        """QueueFullError when `rows` more images do not fit in the queue now (checked before decoding)."""
        if self.batcher is not None:
            self.batcher.refuse_if_full(rows)

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
        """Probabilities, one row per input row, through the batcher (lower `priority` values run first;
        `background` rows only when nothing else waits: see server/batcher.py). With `raw`, the graph's own
        output instead (metadata.output_width columns, as metadata.output_kind says); with `output` (background
        only), that graph output as it is: a layer's activations, (rows, C, H, W)."""
        batcher = self._ready_batcher()
        outputs = await batcher.submit(inputs, deadline, priority, background=background, output=output)
        if not background or raw or output is not None:
            return outputs
        started = time.perf_counter()
        probabilities = self._probabilities(outputs)
        current_request().compute_output += time.perf_counter() - started
        return probabilities

    def infer_nowait(
        self,
        inputs: np.ndarray,
        deadline: float,
        priority: int,
        statistics: RequestStatistics,
        on_done: OnDone,
        company: bool = False,
    ) -> asyncio.Future[np.ndarray]:
        """`infer` of probabilities for at most `batching.max_batch_size` rows, without a coroutine (see
        `DynamicBatcher.submit_nowait`): the future holds them or the error, `statistics` the request's figures
        once it succeeds, and `on_done(future)` is called once it is done. `company`: more requests from the same
        caller are on their way."""
        return self._ready_batcher().submit_nowait(inputs, deadline, priority, statistics, on_done, company)

    def _ready_batcher(self) -> DynamicBatcher:
        if self.state is not ModelState.READY or self.batcher is None:
            raise UnavailableError(f"model {self.name} version {self.version} is {self.state.value}, not READY")
        return self.batcher

    def _probabilities(self, outputs: np.ndarray) -> np.ndarray:
        """What a batch of foreground requests answers (the batcher finishes those batches with it; background
        batches come raw, for explanations)."""
        assert self.metadata is not None
        return to_probabilities(outputs, self.metadata.output_kind)

    async def unload(self, drain_seconds: float) -> None:
        """Refuse new requests, let the queued ones finish (up to `drain_seconds`), then let go of the batcher.
        The batcher holds this version's methods, so keeping it would make the pair a reference cycle that only
        the cycle collector frees, some time later; without it the version and its session are freed as soon as
        the repository drops them (server/memory.py)."""
        self.state = ModelState.UNAVAILABLE
        if self.batcher is not None:
            await self.batcher.close(drain_seconds)
            self.batcher = None
        if self.loaded is not None:
            await asyncio.to_thread(self._let_go_of_the_session)

    def _let_go_of_the_session(self) -> None:
        """Drop the version's only references to its session, which frees it here and now: on CUDA, while holding
        the device shared, since freeing device memory during another version's graph capture would break that
        capture (server/capture_guard.py)."""
        if self.runner is not None:
            self.runner.close()
        with CAPTURE_GUARD.using_device_if(self.provider == CUDA):
            self.runner = None
            self.loaded = None

    def _run(self, parts: list[np.ndarray]) -> np.ndarray:
        assert self.runner is not None
        return self.runner.run_parts(parts)

    def _run_output(self, batch: np.ndarray, output: str) -> np.ndarray:
        assert self.runner is not None
        return self.runner.run_output(batch, output)

    def _warn_of_costly_shape_changes(self) -> None:
        """With several batch buckets on CUDA, say so when a change of input shape costs far more than a run: each
        change makes cuDNN choose its convolution algorithms again, and under load batches change size all the
        time (docs/gpu.md)."""
        assert self.runner is not None
        try:
            cost = self.runner.shape_change_cost()
        except Exception as exc:  # the warm-up ran the same shapes; a diagnosis must not fail the load
            _log.warning(
                "model %s version %d: could not time a change of batch shape: %s", self.name, self.version, exc
            )
            return
        if cost is not None and cost.is_costly():
            _log.warning(
                "model %s version %d: " + SHAPE_CHANGE_WARNING + " %.1f ms a run against %.2f ms for the same shape "
                "(cuDNN chooses its algorithms again), and batches of %s buckets change shape under load: serve "
                "without batch_buckets (one shape, the max batch size); cudnn_conv_algo_search = heuristic makes a "
                "change cheaper, not free",
                self.name,
                self.version,
                cost.after_a_change * 1e3,
                cost.repeated * 1e3,
                len(self.runner.plan.buckets),
            )

    def _switch_to_fp16(self, model_file: Path, runtime: RuntimeSettings) -> Fp16Agreement:
        """Replace the float32 session by one of the graph converted to fp16, once the fp16 graph's top-1 labels
        agree with float32's on generated images (server/precision.py). Raises ModelLoadError when they do not,
        or when the graph cannot be converted."""
        assert self.loaded is not None and self.spec is not None
        images = check_images(self.spec.preprocessing)
        with self._check_runs_hold_the_device(runtime):
            expected = plain_runner(self.loaded.session, self.spec).run_all(images)
        fp16 = create_session(model_file, runtime, fp16_model(model_file))
        with self._check_runs_hold_the_device(runtime):
            found = plain_runner(fp16.session, self.spec).run_all(images)
        agreement = compare_top1(expected, found, self.spec.metadata.output_kind)
        refuse_if_disagreeing(agreement, runtime.fp16_max_disagreement)
        with CAPTURE_GUARD.using_device_if(fp16.provider == CUDA):
            self.loaded = fp16  # the float32 session is freed here (see `_let_go_of_the_session`)
        return agreement

    @staticmethod
    def _check_runs_hold_the_device(runtime: RuntimeSettings) -> AbstractContextManager[None]:
        """With CUDA graphs, the fp16 check's runs hold the device alone. On an H200 (2026-11-28), 1 or 2 of 3
        starts of a server over seven models with `--cuda-graphs --precision fp16` failed: another version's
        session creation beside these runs got "operation not permitted when stream is capturing" from the
        CUDA provider's `cudaDeviceSynchronize`, with no capture of the server's under way (ONNX Runtime logged
        none), while three versions ran their fp16 checks. Something in a fresh fp16 session's first runs keeps a
        stream capturing for a moment. A check takes milliseconds, once per load. (On the CPU, where the setting
        does nothing, the hold costs nothing: no CPU session takes the guard.)"""
        return CAPTURE_GUARD.alone() if runtime.cuda_graphs else nullcontext()

    def _on_batch(self, record: BatchRecord, metrics: ServerMetrics) -> None:
        if not record.failed:
            self.statistics.record_execution(
                record.size, record.input_seconds, record.compute_seconds, record.output_seconds
            )
        metrics.batch_executed(self.name, self.version, record)
