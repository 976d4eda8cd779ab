"""The server's settings: one typed object, built from flags over `CNNSERVE_*` environment variables over an
optional TOML config file over defaults.

Every field is flat so that each has one obvious flag (`--max-batch-size`), one environment variable
(`CNNSERVE_MAX_BATCH_SIZE`) and one config file key (`max_batch_size`). A few fields also take a shorter
spelling, declared on the field as a validation alias (`--drain-timeout`, `CNNSERVE_DRAIN_TIMEOUT`,
`drain_timeout`, next to the `..._seconds` ones).

The batching and ONNX Runtime fields are declared once, in `BatchingFields` and `RuntimeSettings`: the server
inherits them as its defaults, a model's `config.toml` inherits them as its overrides (server/model_config.py),
and the resolved per-model view (`BatchingSettings`, `RuntimeSettings`) validates their merge. Validation happens
when an object is built, so a bad value stops the server at start-up (or fails that model's load) with a message
naming the setting, never halfway through serving.
"""

from __future__ import annotations

import sys
from contextvars import ContextVar
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict, TomlConfigSettingsSource

AUTO = "auto"
"""The value of a setting that the server works out for the machine it runs on."""


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


class Precision(StrEnum):
    """The element type a model's graph computes in."""

    FP32 = "fp32"
    FP16 = "fp16"
    """The float32 graph converted to float16 at load (inputs and outputs stay float32 for callers), after its
    top-1 answers were checked against float32's (server/precision.py)."""


class ConvAlgoSearch(StrEnum):
    """How cuDNN picks a convolution algorithm (CUDA's `cudnn_conv_algo_search`): again at every run whose input
    shape differs from the last one's, which is why CUDA batches run at one shape by default."""

    EXHAUSTIVE = "exhaustive"
    """Time every algorithm (ONNX Runtime's default): the fastest kernels, and the slowest change of shape (23-33
    ms for mnist_net on an H200, against 4-6 ms heuristic; `load_tests.bench.shape_changes`)."""
    HEURISTIC = "heuristic"
    """cuDNN's guess, without timing."""
    DEFAULT = "default"
    """cuDNN's default algorithm."""


class LogFormat(StrEnum):
    TEXT = "text"
    JSON = "json"


def _also_spelled(name: str, *spellings: str) -> AliasChoices:
    """A field's validation alias: its own name first (the key every source normalises to), then `spellings`.

    Each spelling is a flag (`--drain-timeout`), an environment variable (`CNNSERVE_DRAIN_TIMEOUT`) and a config
    file key (`drain_timeout`) of the same field.
    """
    return AliasChoices(name, *spellings)


def spellings(name: str, field: FieldInfo) -> tuple[str, ...]:
    """Every name a settings field answers to, its own first: each is a flag, a variable and a config key."""
    alias = field.validation_alias
    if isinstance(alias, AliasChoices):
        return tuple(str(choice) for choice in alias.choices)
    return (name,)


class BatchingFields(BaseModel):
    """How a model's dynamic batcher groups requests: each field's type, bounds, default and meaning, once.

    Only the declarations: `BatchingSettings` adds the checks across fields, which hold for a complete set of
    values (the server's, or a model's after its config.toml is merged over them), not for a model's overrides
    alone.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)

    max_batch_size: int = Field(32, ge=1, le=4096)
    """The most images run in one session call; 1 turns batching off."""
    max_queue_delay_ms: float = Field(5.0, ge=0.0, le=10_000.0)
    """Milliseconds the oldest queued image may wait for company before its batch runs anyway. 5 ms because on a
    small CPU machine each batch costs about half a millisecond of hand-off, so batches must be large under load
    (mnist_net at 64 callers: 2 ms gave 1.9x batching off's requests/s, 5 ms 2.2x)."""
    preferred_batch_sizes: tuple[int, ...] = ()
    """Batch sizes dispatched as soon as they can be formed, without waiting out the delay; none above
    max_batch_size."""
    adaptive_queue_delay: bool = True
    """Wait out the queue delay only while callers overlap and the next request is expected in time (a lone
    caller is not delayed); --no-adaptive-queue-delay always waits the full delay."""
    max_queue_size: int = Field(1024, ge=1)
    """Images a model may hold queued; beyond it requests are refused at once with RESOURCE_EXHAUSTED."""
    default_timeout_seconds: float = Field(
        30.0, gt=0.0, validation_alias=_also_spelled("default_timeout_seconds", "default_timeout")
    )
    """Deadline, in seconds, of a request that brings none of its own."""
    instances: int = Field(1, ge=1, le=64)
    """Batches of one model that may run at the same time (ONNX Runtime sessions are thread-safe)."""
    priority_levels: int = Field(1, ge=1, le=16)
    """Request priorities 1 (first) .. priority_levels; priority 0 means default_priority_level."""
    default_priority_level: int = Field(0, ge=0, le=16)
    """The level of requests without a priority; 0 means the lowest (= priority_levels)."""
    batch_buckets: tuple[int, ...] = ()
    """Batch sizes the session runs at: a batch is padded with zero rows up to the smallest bucket that holds it
    (the padding's rows never reach a caller), so the session sees few shapes (each warmed up before the model is
    ready, each its own CUDA graph with cuda_graphs). None: each batch runs at its own size on the CPU, and at
    max_batch_size on CUDA, where each change of input shape makes cuDNN choose its algorithms again (docs/gpu.md).
    The largest must be at least max_batch_size."""

    @field_validator("preferred_batch_sizes", "batch_buckets")
    @classmethod
    def _sorted_and_positive(cls, sizes: tuple[int, ...]) -> tuple[int, ...]:
        if any(size < 1 for size in sizes):
            raise ValueError(f"batch sizes must be at least 1, got {list(sizes)}")
        return tuple(sorted(set(sizes)))


class BatchingSettings(BatchingFields):
    """A complete, consistent set of batching settings: the server's defaults, or one model's resolved view."""

    @model_validator(mode="after")
    def _consistent(self) -> BatchingSettings:
        too_big = [size for size in self.preferred_batch_sizes if size > self.max_batch_size]
        if too_big:
            raise ValueError(
                f"preferred_batch_sizes {too_big} exceed max_batch_size {self.max_batch_size}; "
                "raise max_batch_size or leave those sizes out"
            )
        if self.batch_buckets and self.batch_buckets[-1] < self.max_batch_size:
            raise ValueError(
                f"the largest of batch_buckets {list(self.batch_buckets)} is below max_batch_size "
                f"{self.max_batch_size}, so a full batch would fit no bucket; add a bucket of {self.max_batch_size} "
                "or lower max_batch_size"
            )
        if self.default_priority_level > self.priority_levels:
            raise ValueError(
                f"default_priority_level {self.default_priority_level} exceeds priority_levels {self.priority_levels}"
            )
        return self

    @property
    def max_queue_delay_seconds(self) -> float:
        """`max_queue_delay_ms` on the monotonic clock's scale, for the batcher's deadlines."""
        return self.max_queue_delay_ms / 1000.0

    @property
    def default_priority(self) -> int:
        return self.default_priority_level or self.priority_levels


class RuntimeSettings(BaseModel):
    """How a model's ONNX Runtime sessions are built: the declarations, and the resolved per-model view."""

    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)

    execution_provider: ExecutionProvider = ExecutionProvider.AUTO
    """auto: CUDA when it works, else the CPU; cuda: refuse to start without a usable GPU; cpu."""
    cuda_device_id: int = Field(0, ge=0)
    """The GPU that CUDA sessions run on."""
    cuda_memory_limit_bytes: int = Field(0, ge=0)
    """CUDA memory arena limit per session; 0: none."""
    intra_op_threads: int = Field(0, ge=0)
    """ONNX Runtime threads inside one operator; 0 lets it choose."""
    inter_op_threads: int = Field(0, ge=0)
    """ONNX Runtime threads across operators; 0 lets it choose."""
    graph_optimization: GraphOptimization = GraphOptimization.ALL
    """How far ONNX Runtime rewrites the graph before running it."""
    thread_spinning: bool = False
    """Let ONNX Runtime's threads spin-wait between calls (lower latency on dedicated cores); off by default
    because spinning threads take CPU from the event loop that feeds them."""
    io_binding: bool = True
    """Run batches through ONNX Runtime's IO binding: each instance keeps input and output buffers per batch size
    on the session's device (the GPU for CUDA), and only the classifier's output is copied back."""
    precision: Precision = Precision.FP32
    """fp16: convert the float32 graph to float16 at load (callers still send and get float32), after checking
    its top-1 answers against float32's on generated images. Worth it on GPUs with tensor cores."""
    fp16_max_disagreement: float = Field(0.02, ge=0.0, le=1.0)
    """With precision fp16: the share of generated images on which the fp16 graph's top-1 label may differ from
    float32's before the load is refused."""
    cuda_graphs: bool = False
    """On CUDA: capture each batch bucket's run as a CUDA graph at warm-up and replay it (one launch instead of a
    kernel launch per layer). Needs instances = 1 and IO binding; on the CPU it does nothing. The version's batches
    then all run on the one thread that captured its graphs, never inline on an event loop (ONNX Runtime replays
    a graph only in the thread that captured it: server/session_runner.py)."""
    cuda_tf32: bool = False
    """Let CUDA run float32 convolutions and matrix products in TF32 (10-bit mantissa) on GPUs with tensor cores:
    faster, but answers then differ from the CPU's by about 1e-3; off, fp32 means float32 (use precision fp16 for
    the fast path, whose answers are checked at load)."""
    cudnn_conv_algo_search: ConvAlgoSearch = ConvAlgoSearch.EXHAUSTIVE
    """How cuDNN picks convolution algorithms: exhaustive (timed, fastest kernels), heuristic or default."""


def cuda_graph_conflicts(instances: int, io_binding: bool) -> str:
    """Why CUDA graphs cannot run with these settings; empty when they can. A captured graph replays on fixed
    buffers that only IO binding keeps, and one session cannot replay its graphs from two threads at once."""
    if not io_binding:
        return "cuda_graphs needs io_binding (a captured graph replays on buffers kept at fixed addresses)"
    if instances != 1:
        return (
            f"cuda_graphs needs instances = 1, not {instances} (one session replays its graphs one batch at a "
            "time; a GPU is kept busy by one instance whose launches cost next to nothing)"
        )
    return ""


_config_file: ContextVar[Path | None] = ContextVar("cnnserve_config_file", default=None)


class ServerSettings(BaseSettings, BatchingSettings, RuntimeSettings):
    """Everything `cnnserve serve` can be told. The batching and runtime fields are defaults per model.

    Each field's environment variable is its name (or another spelling of it) upper-cased and prefixed
    `CNNSERVE_`; a config file's keys are the same names.
    """

    model_config = SettingsConfigDict(
        env_prefix="CNNSERVE_",
        env_prefix_target="all",
        frozen=True,
        extra="forbid",
        use_attribute_docstrings=True,
    )

    model_repository: Path
    """Folder holding one folder per model, and in it one numbered folder per version (see repository_layout)."""
    host: str = "127.0.0.1"
    """Interface to listen on; 0.0.0.0 to be reachable from outside."""
    grpc_port: int = Field(8001, ge=0, le=65535)
    """The gRPC port; 0 picks a free port."""
    metrics_port: int = Field(8002, ge=0, le=65535)
    """Prometheus /metrics over HTTP; 0 picks a free port."""
    frontends: Annotated[int, Field(ge=0, le=256)] | Literal["auto"] = AUTO
    """gRPC front-end processes sharing the port, feeding one engine process that batches and runs the models
    (docs/architecture.md); 0: one process does everything. auto: half the usable cores on a host with an NVIDIA
    GPU and at least 8 cores, else 0 (server/supervisor.py, `auto_frontends`)."""
    gil_switch_interval_ms: float = Field(0.0, ge=0.0, le=100.0)
    """How long a Python thread may keep the interpreter lock while another waits for it (sys.setswitchinterval),
    in every process of the server; 0 keeps Python's 5 ms. The thread that runs a batch needs the lock for a
    moment after each run while the event loop holds it, so a batch can wait up to this long to be answered; on
    a GPU, where a batch takes a fraction of a millisecond, such waits may bound the batches a second. Smaller
    hands the lock over sooner, at the price of more switching between threads."""
    gc_young_threshold: int = Field(7000, ge=0)
    """Once a server process has started, it freezes the objects it made while starting and collects Python's
    young generation every this many net allocations (server/heap.py); 0 leaves the collector as Python sets it
    (700, and every collection of the whole heap traversing everything). With Python's default a serving process
    spent 15-23 µs of its event loop per call collecting, and stalled 20 ms every 2,000-2,500 calls."""
    repository_poll_seconds: float = Field(0.0, ge=0.0)
    """Poll the repository for new or removed versions this often; 0: never."""
    required_models: tuple[str, ...] = ()
    """Models that must be ready for the server to report ready; none named: every model of the repository
    (strict, like Triton). Others may fail to load without holding the replica back."""
    allow_repository_changes: bool = True
    """Allow explicit load/unload calls over the API."""
    allow_shared_memory: bool = True
    """Let clients on this host register system shared memory regions (/dev/shm) for tensors."""
    max_images_per_request: int = Field(256, ge=1)
    """Images one call may carry."""
    max_image_pixels: int = Field(40_000_000, ge=1)
    """Decoded images larger than this are refused."""
    max_explanation_rows: int = Field(10_000, ge=1)
    """Forward passes one Explain call may take: occlusion positions or RISE masks, plus the unchanged image."""
    max_explanation_seconds: float = Field(60.0, gt=0)
    """An Explain call's deadline when the caller sets none, and the longest it may have."""
    max_message_bytes: int = Field(64 * 1024 * 1024, ge=1024)
    """Largest gRPC message accepted."""
    drain_timeout_seconds: float = Field(
        20.0, ge=0.0, validation_alias=_also_spelled("drain_timeout_seconds", "drain_timeout")
    )
    """On SIGTERM, how long (in seconds) accepted requests may take to finish before exit."""
    tls_cert_file: Path | None = Field(None, validation_alias=_also_spelled("tls_cert_file", "tls_cert"))
    """PEM certificate chain; with tls_key_file, serve TLS."""
    tls_key_file: Path | None = Field(None, validation_alias=_also_spelled("tls_key_file", "tls_key"))
    """PEM private key of tls_cert_file."""
    tls_client_ca_file: Path | None = Field(None, validation_alias=_also_spelled("tls_client_ca_file", "tls_client_ca"))
    """PEM CA bundle; when set, clients must present a certificate it signed (mutual TLS)."""
    auth_token_file: Path | None = None
    """File of bearer tokens, one per line; when set (or auth_tokens), every RPC but health and reflection needs
    'authorization: Bearer <token>'."""
    auth_tokens: SecretStr | None = None
    """Comma-separated bearer tokens; prefer the environment variable or a file to a flag."""
    max_connection_age_seconds: float = Field(300.0, gt=0)
    """Connections are closed (gracefully) after this age, so clients re-resolve DNS and spread over replicas
    added since."""
    log_format: LogFormat = LogFormat.TEXT
    """Log lines as text, or as JSON objects (one per line)."""
    request_log: bool = False
    """Log one line per inference request, with its request id (it costs time on the hot path)."""
    port_file: Path | None = None
    """When set, the bound ports are written here as JSON once every model has loaded or failed to (a model that
    failed keeps health NOT_SERVING; GetModel says why)."""

    def apply_to_interpreter(self) -> None:
        """Set what these settings say of the Python process itself (gil_switch_interval_ms); every process of
        the server calls it once at start."""
        if self.gil_switch_interval_ms:
            sys.setswitchinterval(self.gil_switch_interval_ms / 1000)

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

    @model_validator(mode="after")
    def _tls_files_come_together(self) -> ServerSettings:
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("TLS needs both tls_cert_file and tls_key_file")
        if self.tls_client_ca_file is not None and self.tls_cert_file is None:
            raise ValueError("mutual TLS (tls_client_ca_file) needs tls_cert_file and tls_key_file too")
        for path in (self.tls_cert_file, self.tls_key_file, self.tls_client_ca_file, self.auth_token_file):
            if path is not None and not path.is_file():
                raise ValueError(f"file {str(path)!r} does not exist")
        return self

    @model_validator(mode="after")
    def _cuda_graphs_can_run(self) -> ServerSettings:
        if self.cuda_graphs:
            conflict = cuda_graph_conflicts(self.instances, self.io_binding)
            if conflict:
                raise ValueError(conflict)
        return self

    @field_validator("model_repository")
    @classmethod
    def _repository_exists(cls, path: Path) -> Path:
        if not path.is_dir():
            raise ValueError(
                f"model repository {str(path)!r} is not a folder; build one with `cnnserve train NAME --out DIR`"
            )
        return path
