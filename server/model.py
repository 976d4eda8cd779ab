"""One loaded model version: its session, its metadata, its preprocessor and its batcher."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

import numpy as np

from cnnserve.metadata import ModelMetadata
from cnnserve.server.batcher import BatchRecord, DynamicBatcher
from cnnserve.server.errors import ExecutionProviderError, ModelLoadError, UnavailableError
from cnnserve.server.metrics import ServerMetrics
from cnnserve.server.model_config import ModelConfig
from cnnserve.server.postprocess import to_probabilities
from cnnserve.server.preprocess import ImagePreprocessor
from cnnserve.server.runtime import LoadedSession, create_session
from cnnserve.server.settings import BatchingSettings, RuntimeSettings, ServerSettings
from cnnserve.server.statistics import ModelStatistics

_log = logging.getLogger(__name__)


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
    loaded: LoadedSession | None = None
    preprocessor: ImagePreprocessor | None = None
    batcher: DynamicBatcher | None = None
    batching: BatchingSettings | None = None
    runtime: RuntimeSettings | None = None
    statistics: ModelStatistics = field(default_factory=ModelStatistics)
    load_seconds: float = 0.0
    _input_name: str = field(default="input", repr=False)

    @property
    def ready(self) -> bool:
        return self.state is ModelState.READY

    @property
    def provider(self) -> str:
        return self.loaded.provider if self.loaded else ""

    async def load(self, config: ModelConfig, server: ServerSettings, metrics: ServerMetrics) -> None:
        """Create the session off the event loop, read the metadata, resolve the settings, warm up, start batching.

        Never raises for a bad model: the version is left FAILED with the reason, so one broken file cannot take
        the other models down. Raises ExecutionProviderError when CUDA was required and is not usable, because
        then the server must refuse to start.
        """
        started = time.monotonic()
        try:
            self.runtime = config.runtime(server)
            self.loaded = await asyncio.to_thread(create_session, self.path / "model.onnx", self.runtime)
            session = self.loaded.session
            self.metadata = ModelMetadata.from_metadata_props(session.get_modelmeta().custom_metadata_map)
            graph_batch_dim = self._check_signature()
            self.batching = batching = config.batching(server, graph_batch_dim)
            self.preprocessor = ImagePreprocessor(self.metadata.preprocessing, server.max_image_pixels)
            await asyncio.to_thread(self._warm_up, {1, *batching.preferred_batch_sizes, batching.max_batch_size})
        except ExecutionProviderError:
            raise
        except Exception as exc:
            self.state = ModelState.FAILED
            self.reason = f"{exc.__class__.__name__}: {exc}"
            _log.error("model %s version %d failed to load: %s", self.name, self.version, self.reason)
            return
        self.batcher = DynamicBatcher(
            self._run, batching, name=self.name, on_batch=lambda record: self._on_batch(record, metrics)
        )
        self.batcher.start()
        self.load_seconds = time.monotonic() - started
        self.state = ModelState.READY
        metrics.model_loaded(self)
        _log.info(
            "model %s version %d ready on %s in %.2fs (batch up to %d, delay %.1f ms)",
            self.name,
            self.version,
            self.provider,
            self.load_seconds,
            batching.max_batch_size,
            batching.max_queue_delay_seconds * 1000,
        )

    async def infer(self, inputs: np.ndarray, deadline: float, priority: int = 0) -> np.ndarray:
        """Probabilities, one row per input row, through the batcher (lower `priority` values run first)."""
        if self.state is not ModelState.READY or self.batcher is None:
            raise UnavailableError(f"model {self.name} version {self.version} is {self.state.value}, not READY")
        outputs = await self.batcher.submit(inputs, deadline, priority)
        assert self.metadata is not None
        started = time.perf_counter()
        probabilities = to_probabilities(outputs, self.metadata.output_kind)
        self.statistics.compute_output.add(time.perf_counter() - started)
        return probabilities

    async def unload(self, drain_seconds: float) -> None:
        self.state = ModelState.UNAVAILABLE
        if self.batcher is not None:
            await self.batcher.close(drain_seconds)

    def _run(self, batch: np.ndarray) -> np.ndarray:
        assert self.loaded is not None
        return self.loaded.session.run(None, {self._input_name: batch})[0]

    def _check_signature(self) -> int | None:
        """Check the graph against the metadata; returns its batch dimension when fixed, None when dynamic."""
        assert self.loaded is not None and self.metadata is not None
        inputs = self.loaded.session.get_inputs()
        outputs = self.loaded.session.get_outputs()
        if len(inputs) != 1 or len(outputs) != 1:
            raise ModelLoadError(f"expected one input and one output, found {len(inputs)} and {len(outputs)}")
        self._input_name = inputs[0].name
        pre = self.metadata.preprocessing
        expected = [pre.channels, pre.height, pre.width]
        declared = inputs[0].shape[1:]
        if [d if isinstance(d, int) else None for d in declared] != expected:
            raise ModelLoadError(f"the graph's input shape {inputs[0].shape} does not match the metadata {expected}")
        batch_dim = inputs[0].shape[0]
        return batch_dim if isinstance(batch_dim, int) and batch_dim > 0 else None

    def _warm_up(self, sizes: set[int]) -> None:
        """One run at each size the batcher will form most, so the first requests do not pay for allocation."""
        assert self.preprocessor is not None
        for size in sorted(sizes):
            outputs = self._run(np.zeros((size, *self.preprocessor.input_shape), np.float32))
            if len(outputs) != size:
                raise ModelLoadError(f"a warm-up batch of {size} returned {len(outputs)} rows")

    def _on_batch(self, record: BatchRecord, metrics: ServerMetrics) -> None:
        stats = self.statistics
        stats.record_batch(record.size, record.compute_seconds)
        if not record.failed:
            stats.compute_infer.add(record.compute_seconds * record.requests, record.requests)
            for wait in record.queue_wait_seconds:
                stats.queue.add(wait)
        metrics.batch_executed(self.name, self.version, record)
