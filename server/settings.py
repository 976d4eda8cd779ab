"""The server's settings: one typed object, built from flags over `CNNSERVE_*` environment variables over defaults.

Validation happens when the object is built, so a bad value stops the server at start-up with a message naming
the setting, never halfway through serving.
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path

from pydantic import BaseModel, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class ExecutionProvider(StrEnum):
    """Which ONNX Runtime execution provider to run models on."""

    AUTO = "auto"
    """CUDA when this machine has a usable GPU, else CPU; the server reports which it got."""
    CUDA = "cuda"
    """CUDA or nothing: the server refuses to start without a usable GPU."""
    CPU = "cpu"


class LogFormat(StrEnum):
    TEXT = "text"
    JSON = "json"


class BatchingSettings(BaseModel):
    """How a model's dynamic batcher groups requests."""

    model_config = {"frozen": True}

    max_batch_size: int = Field(32, ge=1, le=4096)
    """The most images run in one session call; 1 turns batching off."""
    max_queue_delay_seconds: float = Field(0.002, ge=0.0, le=10.0)
    """How long the oldest queued image waits for company before its batch runs anyway."""
    max_queue_size: int = Field(1024, ge=1)
    """Images a model may hold queued; beyond it requests are refused at once with RESOURCE_EXHAUSTED."""
    default_timeout_seconds: float = Field(30.0, gt=0.0)
    """Deadline for a request that brings none of its own."""
    instances: int = Field(1, ge=1, le=64)
    """Batches of one model that may run at the same time (ONNX Runtime sessions are thread-safe)."""


class ServerSettings(BaseSettings):
    """Everything `cnnserve serve` can be told. Environment variables are the field names prefixed `CNNSERVE_`."""

    model_config = SettingsConfigDict(env_prefix="CNNSERVE_", env_nested_delimiter="__", frozen=True)

    model_repository: Path = Field(description="folder holding <name>/<version>/model.onnx")
    host: str = Field("127.0.0.1", description="interface to listen on; 0.0.0.0 to be reachable from outside")
    grpc_port: int = Field(8001, ge=0, le=65535, description="0 picks a free port")
    metrics_port: int = Field(8002, ge=0, le=65535, description="Prometheus /metrics over HTTP; 0 picks a free port")
    execution_provider: ExecutionProvider = ExecutionProvider.AUTO
    intra_op_threads: int = Field(0, ge=0, description="ONNX Runtime threads per session; 0 lets it choose")
    batching: BatchingSettings = BatchingSettings()
    max_images_per_request: int = Field(256, ge=1)
    max_message_bytes: int = Field(64 * 1024 * 1024, ge=1024, description="largest gRPC message accepted")
    drain_timeout_seconds: float = Field(
        20.0, ge=0.0, description="on SIGTERM, how long accepted requests may take to finish before exit"
    )
    tls_cert_file: Path | None = Field(None, description="PEM certificate chain; with tls_key_file, serve TLS")
    tls_key_file: Path | None = Field(None, description="PEM private key of tls_cert_file")
    tls_client_ca_file: Path | None = Field(
        None, description="PEM CA bundle; when set, clients must present a certificate it signed (mutual TLS)"
    )
    max_connection_age_seconds: float = Field(
        300.0,
        gt=0,
        description="connections are closed (gracefully) after this age, so clients re-resolve DNS and spread "
        "over replicas added since",
    )
    log_format: LogFormat = LogFormat.TEXT
    port_file: Path | None = Field(
        None, description="when set, the bound ports are written here as JSON once every model is ready"
    )

    @model_validator(mode="after")
    def _tls_files_come_together(self) -> ServerSettings:
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("TLS needs both tls_cert_file and tls_key_file")
        if self.tls_client_ca_file is not None and self.tls_cert_file is None:
            raise ValueError("mutual TLS (tls_client_ca_file) needs tls_cert_file and tls_key_file too")
        for path in (self.tls_cert_file, self.tls_key_file, self.tls_client_ca_file):
            if path is not None and not path.is_file():
                raise ValueError(f"TLS file {str(path)!r} does not exist")
        return self

    @field_validator("model_repository")
    @classmethod
    def _repository_exists(cls, path: Path) -> Path:
        if not path.is_dir():
            raise ValueError(
                f"model repository {str(path)!r} is not a folder; build one with `cnnserve train NAME --out DIR`"
            )
        return path
