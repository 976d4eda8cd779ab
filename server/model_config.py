"""A model's own settings: ``<repository>/<name>/config.toml``, every key optional.

Example::

    max_batch_size = 64
    max_queue_delay_ms = 1.0
    preferred_batch_sizes = [16, 32]
    instances = 2
    execution_provider = "cpu"
    intra_op_threads = 1

    [version_policy]
    latest = 2            # or: specific = [1, 3]   or: all = true

Whatever the file omits comes from the server-wide settings, and what neither says is derived from the model
itself: a graph whose batch dimension is fixed at 1 is served with batching off.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

from pydantic import BaseModel, Field, ValidationError, model_validator

from cnnserve.server.errors import ModelLoadError
from cnnserve.server.settings import (
    BatchingSettings,
    ExecutionProvider,
    GraphOptimization,
    RuntimeSettings,
    ServerSettings,
)

CONFIG_FILE_NAME = "config.toml"


class VersionPolicy(BaseModel):
    """Which versions of a model are served. Exactly one of the three; the default is the newest one."""

    model_config = {"frozen": True, "extra": "forbid"}

    latest: int | None = Field(None, ge=1)
    specific: tuple[int, ...] | None = None
    all: bool = False

    @model_validator(mode="after")
    def _one_kind(self) -> VersionPolicy:
        chosen = sum([self.latest is not None, self.specific is not None, self.all])
        if chosen > 1:
            raise ValueError("version_policy takes one of latest, specific or all")
        return self

    def select(self, available: list[int]) -> list[int]:
        """The versions to serve out of `available`, ascending."""
        ordered = sorted(available)
        if self.all:
            return ordered
        if self.specific is not None:
            return [v for v in ordered if v in set(self.specific)]
        return ordered[-(self.latest or 1) :]


class ModelConfig(BaseModel):
    """The contents of a model's config.toml; `None` means "not said here"."""

    model_config = {"frozen": True, "extra": "forbid"}

    max_batch_size: int | None = Field(None, ge=1, le=4096)
    max_queue_delay_ms: float | None = Field(None, ge=0.0, le=10_000.0)
    preferred_batch_sizes: tuple[int, ...] | None = None
    adaptive_queue_delay: bool | None = None
    max_queue_size: int | None = Field(None, ge=1)
    default_timeout_seconds: float | None = Field(None, gt=0.0)
    instances: int | None = Field(None, ge=1, le=64)
    priority_levels: int | None = Field(None, ge=1, le=16)
    default_priority_level: int | None = Field(None, ge=0, le=16)
    execution_provider: ExecutionProvider | None = None
    cuda_device_id: int | None = Field(None, ge=0)
    cuda_memory_limit_bytes: int | None = Field(None, ge=0)
    intra_op_threads: int | None = Field(None, ge=0)
    inter_op_threads: int | None = Field(None, ge=0)
    graph_optimization: GraphOptimization | None = None
    thread_spinning: bool | None = None
    version_policy: VersionPolicy = VersionPolicy()

    @classmethod
    def read(cls, model_dir: Path) -> ModelConfig:
        """The model's config.toml, or all defaults when there is none. Raises ModelLoadError when malformed."""
        path = model_dir / CONFIG_FILE_NAME
        if not path.is_file():
            return cls()
        try:
            return cls.model_validate(tomllib.loads(path.read_text()))
        except (tomllib.TOMLDecodeError, ValidationError, UnicodeDecodeError) as exc:
            raise ModelLoadError(f"{path} is not a valid model config: {exc}") from exc

    def batching(self, server: ServerSettings, graph_batch_dim: int | None) -> BatchingSettings:
        """This model's batching settings: the file's, else the server's; batching off for a fixed batch of 1.

        `graph_batch_dim` is the graph's declared batch dimension: an int when fixed, None when dynamic. A fixed
        dimension caps max_batch_size at that value.
        """
        defaults = server.batching
        max_batch_size = self.max_batch_size or defaults.max_batch_size
        if graph_batch_dim is not None:
            max_batch_size = min(max_batch_size, graph_batch_dim)
        delay_ms = self.max_queue_delay_ms
        preferred = (
            self.preferred_batch_sizes if self.preferred_batch_sizes is not None else defaults.preferred_batch_sizes
        )
        try:
            return BatchingSettings(
                max_batch_size=max_batch_size,
                max_queue_delay_seconds=defaults.max_queue_delay_seconds if delay_ms is None else delay_ms / 1000,
                preferred_batch_sizes=tuple(size for size in preferred if size <= max_batch_size),
                adaptive_queue_delay=(
                    defaults.adaptive_queue_delay if self.adaptive_queue_delay is None else self.adaptive_queue_delay
                ),
                max_queue_size=self.max_queue_size or defaults.max_queue_size,
                default_timeout_seconds=self.default_timeout_seconds or defaults.default_timeout_seconds,
                instances=self.instances or defaults.instances,
                priority_levels=self.priority_levels or defaults.priority_levels,
                default_priority_level=(
                    defaults.default_priority_level
                    if self.default_priority_level is None
                    else self.default_priority_level
                ),
            )
        except ValidationError as exc:
            raise ModelLoadError(f"inconsistent batching settings: {exc}") from exc

    def runtime(self, server: ServerSettings) -> RuntimeSettings:
        defaults = server.runtime
        overrides = {
            key: value
            for key, value in self.model_dump(include=set(RuntimeSettings.model_fields)).items()
            if value is not None
        }
        return defaults.model_copy(update=overrides)
