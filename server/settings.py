"""The server's settings: one typed object, built from flags over `CNNSERVE_*` environment variables over an
optional TOML config file over defaults.

Every field is flat so that each has one obvious flag (`--max-batch-size`) and one obvious environment variable
(`CNNSERVE_MAX_BATCH_SIZE`). Batching and ONNX Runtime fields are server-wide defaults that a model's own
`config.toml` may override (server/model_config.py). Validation happens when the object is built, so a bad value
stops the server at start-up with a message naming the setting, never halfway through serving.
"""

from __future__ import annotations

from contextvars import ContextVar
from enum import StrEnum
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict, TomlConfigSettingsSource


class ExecutionProvider(StrEnum):
    """Which ONNX Runtime execution provider to run models on."""

    AUTO = "auto"
    """CUDA when this machine has a usable GPU, else CPU; the server reports which it got."""
    CUDA = "cuda"
    """CUDA or nothing: the server refuses to start without a usable GPU."""
    CPU = "cpu"


class GraphOptimization(StrEnum):
    """ONNX Runtime's graph optimisation levels."""

    DISABLED = "disabled"
    BASIC = "basic"
    EXTENDED = "extended"
    ALL = "all"


class LogFormat(StrEnum):
    TEXT = "text"
    JSON = "json"


class BatchingSettings(BaseModel):
    """How one model's dynamic batcher groups requests (the resolved, per-model view)."""

    model_config = {"frozen": True}

    max_batch_size: int = Field(32, ge=1, le=4096)
    """The most images run in one session call; 1 turns batching off."""
    max_queue_delay_seconds: float = Field(0.005, ge=0.0, le=10.0)
    """How long the oldest queued image waits for company before its batch runs anyway. 5 ms: on a small CPU
    machine each batch costs the event loop about half a millisecond of hand-off, so under load batches must
    be large (mnist_net at 64 callers: 2 ms gave batches of 6 and 1.9x batching off's requests/s, 5 ms
    batches of 14 and 2.2x); the adaptive delay keeps a lone caller from waiting at all."""
    preferred_batch_sizes: tuple[int, ...] = ()
    """Sizes dispatched as soon as they can be formed, without waiting out the delay."""
    adaptive_queue_delay: bool = True
    """Wait out the delay only while callers overlap and the next request is expected in time."""
    max_queue_size: int = Field(1024, ge=1)
    """Images a model may hold queued; beyond it requests are refused at once with RESOURCE_EXHAUSTED."""
    default_timeout_seconds: float = Field(30.0, gt=0.0)
    """Deadline for a request that brings none of its own."""
    instances: int = Field(1, ge=1, le=64)
    """Batches of one model that may run at the same time (ONNX Runtime sessions are thread-safe)."""
    priority_levels: int = Field(1, ge=1, le=16)
    """Request priorities 1 (first) .. priority_levels; priority 0 means `default_priority_level`."""
    default_priority_level: int = Field(0, ge=0, le=16)
    """The level of requests without a priority; 0 means the lowest (= priority_levels)."""

    @model_validator(mode="after")
    def _consistent(self) -> BatchingSettings:
        too_big = [size for size in self.preferred_batch_sizes if not 1 <= size <= self.max_batch_size]
        if too_big:
            raise ValueError(f"preferred batch sizes {too_big} must lie within 1..max_batch_size={self.max_batch_size}")
        if self.default_priority_level > self.priority_levels:
            raise ValueError(
                f"default_priority_level {self.default_priority_level} exceeds priority_levels {self.priority_levels}"
            )
        if self.preferred_batch_sizes != tuple(sorted(set(self.preferred_batch_sizes))):
            object.__setattr__(self, "preferred_batch_sizes", tuple(sorted(set(self.preferred_batch_sizes))))
        return self

    @property
    def default_priority(self) -> int:
        return self.default_priority_level or self.priority_levels


class RuntimeSettings(BaseModel):
    """How one model's ONNX Runtime sessions are built (the resolved, per-model view)."""

    model_config = {"frozen": True}

    execution_provider: ExecutionProvider = ExecutionProvider.AUTO
    cuda_device_id: int = Field(0, ge=0)
    cuda_memory_limit_bytes: int = Field(0, ge=0, description="0: no limit")
    intra_op_threads: int = Field(0, ge=0, description="threads inside one operator; 0 lets ONNX Runtime choose")
    inter_op_threads: int = Field(0, ge=0, description="threads across operators; 0 lets ONNX Runtime choose")
    graph_optimization: GraphOptimization = GraphOptimization.ALL
    thread_spinning: bool = Field(
        False, description="let ONNX Runtime's worker threads spin between calls (lower latency on dedicated cores)"
    )


_config_file: ContextVar[Path | None] = ContextVar("cnnserve_config_file", default=None)


class ServerSettings(BaseSettings):
    """Everything `cnnserve serve` can be told. Environment variables are the field names prefixed `CNNSERVE_`."""

    model_config = SettingsConfigDict(env_prefix="CNNSERVE_", frozen=True, extra="forbid")

    model_repository: Path = Field(description="folder holding <name>/<version>/model.onnx")
    host: str = Field("127.0.0.1", description="interface to listen on; 0.0.0.0 to be reachable from outside")
    grpc_port: int = Field(8001, ge=0, le=65535, description="0 picks a free port")
    metrics_port: int = Field(8002, ge=0, le=65535, description="Prometheus /metrics over HTTP; 0 picks a free port")

    max_batch_size: int = Field(32, ge=1, le=4096, description="default per model; 1 disables batching")
    max_queue_delay_ms: float = Field(5.0, ge=0.0, le=10_000.0, description="default per model")
    preferred_batch_sizes: tuple[int, ...] = Field((), description="default per model")
    adaptive_queue_delay: bool = Field(
        True,
        description="wait out the queue delay only while callers overlap and the next request is expected in "
        "time (a lone caller is not delayed); --no-adaptive-queue-delay always waits the full delay",
    )
    max_queue_size: int = Field(1024, ge=1, description="images queued per model before RESOURCE_EXHAUSTED")
    default_timeout_seconds: float = Field(30.0, gt=0.0, description="deadline of calls that bring none")
    instances: int = Field(1, ge=1, le=64, description="batches of one model run at once")
    priority_levels: int = Field(1, ge=1, le=16)
    default_priority_level: int = Field(0, ge=0, le=16)

    execution_provider: ExecutionProvider = ExecutionProvider.AUTO
    cuda_device_id: int = Field(0, ge=0)
    cuda_memory_limit_bytes: int = Field(0, ge=0, description="CUDA memory arena limit per session; 0: none")
    intra_op_threads: int = Field(0, ge=0, description="ONNX Runtime threads per operator; 0 lets it choose")
    inter_op_threads: int = Field(0, ge=0)
    graph_optimization: GraphOptimization = GraphOptimization.ALL
    thread_spinning: bool = Field(
        False,
        description="let ONNX Runtime's threads spin-wait between calls; off by default because spinning threads "
        "take CPU from the event loop that feeds them",
    )

    repository_poll_seconds: float = Field(
        0.0, ge=0.0, description="poll the repository for new or removed versions this often; 0: never"
    )
    allow_repository_changes: bool = Field(True, description="allow explicit load/unload calls over the API")
    allow_shared_memory: bool = Field(
        True,
        description="let clients on this host register system shared memory regions (/dev/shm) for tensors",
    )
    max_images_per_request: int = Field(256, ge=1)
    max_image_pixels: int = Field(40_000_000, ge=1, description="decoded images larger than this are refused")
    max_message_bytes: int = Field(64 * 1024 * 1024, ge=1024, description="largest gRPC message accepted")
    drain_timeout_seconds: float = Field(
        20.0, ge=0.0, description="on SIGTERM, how long accepted requests may take to finish before exit"
    )
    tls_cert_file: Path | None = Field(None, description="PEM certificate chain; with tls_key_file, serve TLS")
    tls_key_file: Path | None = Field(None, description="PEM private key of tls_cert_file")
    tls_client_ca_file: Path | None = Field(
        None, description="PEM CA bundle; when set, clients must present a certificate it signed (mutual TLS)"
    )
    auth_token_file: Path | None = Field(
        None,
        description="file of bearer tokens, one per line; when set (or auth_tokens), every RPC but health "
        "and reflection needs 'authorization: Bearer <token>'",
    )
    auth_tokens: SecretStr | None = Field(
        None, description="comma-separated bearer tokens; prefer the environment variable or a file to a flag"
    )
    max_connection_age_seconds: float = Field(
        300.0,
        gt=0,
        description="connections are closed (gracefully) after this age, so clients re-resolve DNS and spread "
        "over replicas added since",
    )
    log_format: LogFormat = Field(LogFormat.TEXT, description="log lines as text, or as JSON objects (one per line)")
    request_log: bool = Field(
        False, description="log one line per inference request, with its request id; off by default (hot path)"
    )
    port_file: Path | None = Field(
        None, description="when set, the bound ports are written here as JSON once every model is ready"
    )

    @classmethod
    def load(cls, config_file: Path | None = None, **values: Any) -> ServerSettings:
        """Settings from `values` (flags) over the environment over `config_file` (TOML) over defaults."""
        if config_file is not None and not config_file.is_file():
            raise ValueError(f"config file {str(config_file)!r} does not exist")
        token = _config_file.set(config_file)
        try:
            return cls(**values)
        finally:
            _config_file.reset(token)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        config_file = _config_file.get()
        if config_file is None:
            return (init_settings, env_settings)
        return (init_settings, env_settings, TomlConfigSettingsSource(settings_cls, toml_file=config_file))

    @property
    def batching(self) -> BatchingSettings:
        """The server-wide batching defaults."""
        return BatchingSettings(
            max_batch_size=self.max_batch_size,
            max_queue_delay_seconds=self.max_queue_delay_ms / 1000.0,
            preferred_batch_sizes=tuple(s for s in self.preferred_batch_sizes if s <= self.max_batch_size),
            adaptive_queue_delay=self.adaptive_queue_delay,
            max_queue_size=self.max_queue_size,
            default_timeout_seconds=self.default_timeout_seconds,
            instances=self.instances,
            priority_levels=self.priority_levels,
            default_priority_level=self.default_priority_level,
        )

    @property
    def runtime(self) -> RuntimeSettings:
        """The server-wide ONNX Runtime defaults."""
        return RuntimeSettings(
            execution_provider=self.execution_provider,
            cuda_device_id=self.cuda_device_id,
            cuda_memory_limit_bytes=self.cuda_memory_limit_bytes,
            intra_op_threads=self.intra_op_threads,
            inter_op_threads=self.inter_op_threads,
            graph_optimization=self.graph_optimization,
            thread_spinning=self.thread_spinning,
        )

    @model_validator(mode="after")
    def _tls_files_come_together(self) -> ServerSettings:
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("TLS needs both tls_cert_file and tls_key_file")
        if self.tls_client_ca_file is not None and self.tls_cert_file is None:
            raise ValueError("mutual TLS (tls_client_ca_file) needs tls_cert_file and tls_key_file too")
        for path in (self.tls_cert_file, self.tls_key_file, self.tls_client_ca_file, self.auth_token_file):
            if path is not None and not path.is_file():
                raise ValueError(f"file {str(path)!r} does not exist")
        self.batching  # noqa: B018 - validates the batching defaults together
        return self

    @field_validator("model_repository")
    @classmethod
    def _repository_exists(cls, path: Path) -> Path:
        if not path.is_dir():
            raise ValueError(
                f"model repository {str(path)!r} is not a folder; build one with `cnnserve train NAME --out DIR`"
            )
        return path
