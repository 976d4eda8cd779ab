"""How a client connects: retry policy, keepalive, TLS, load balancing, each validated when built, and their
translation into gRPC channel options and credentials.

Retries are gRPC's own (a service config `retryPolicy`), not a loop in this library: gRPC knows whether a call was
committed (the server sent headers) and never replays one that might have been processed, it backs off with
jitter, and every attempt stays inside the call's one deadline.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import grpc

from cnnserve import __version__

DEFAULT_TARGET = "127.0.0.1:8001"
DEFAULT_TIMEOUT_SECONDS = 10.0
DEFAULT_EXPLAIN_TIMEOUT_SECONDS = 60.0
"""Explain's own default deadline: an explanation is hundreds of forward passes, which yield to every classification."""
CLASSIFIER_SERVICE = "cnnserve.v1.ImageClassifier"
HEALTH_SERVICE = "grpc.health.v1.Health"
LoadBalancing = Literal["round_robin", "pick_first"]
ChannelOptions = list[tuple[str, Any]]


@dataclass(frozen=True)
class RetryPolicy:
    """Retries of calls that failed with a transient status, with exponential backoff and jitter.

    gRPC waits a random time up to `initial_backoff` seconds before the second attempt, and multiplies that bound
    by `backoff_multiplier` for each further attempt, up to `max_backoff`. gRPC allows at most 5 attempts.
    """

    max_attempts: int = 5
    """Attempts in all, the first included: 2 to 5."""
    initial_backoff: float = 0.1
    max_backoff: float = 2.0
    backoff_multiplier: float = 2.0
    retryable_status_codes: tuple[grpc.StatusCode, ...] = (
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    )

    def __post_init__(self) -> None:
        if not 2 <= self.max_attempts <= 5:
            raise ValueError(f"max_attempts must be 2 to 5 (gRPC's limit), got {self.max_attempts}; use retry=None")
        for name in ("initial_backoff", "max_backoff", "backoff_multiplier"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a positive number of seconds, got {value}")
        if self.max_backoff < self.initial_backoff:
            raise ValueError("max_backoff must be at least initial_backoff")
        if not self.retryable_status_codes:
            raise ValueError("retryable_status_codes must name at least one status code")

    def as_service_config(self) -> dict[str, Any]:
        """The `retryPolicy` object of a gRPC service config."""
        return {
            "maxAttempts": self.max_attempts,
            "initialBackoff": _duration(self.initial_backoff),
            "maxBackoff": _duration(self.max_backoff),
            "backoffMultiplier": self.backoff_multiplier,
            "retryableStatusCodes": [code.name for code in self.retryable_status_codes],
        }


DEFAULT_RETRY = RetryPolicy()


@dataclass(frozen=True)
class Keepalive:
    """HTTP/2 pings that find a dead connection (a replica that vanished, a silent NAT) before a call's deadline.

    A ping is sent after `interval` seconds without activity on a connection; one unanswered for `timeout` seconds
    closes the connection and gRPC reconnects. By default pings go only while calls are in flight;
    `permit_without_calls` pings idle connections too, which finds a vanished replica before the next call is
    routed to it, but only servers configured to accept that allow it: gRPC servers by default answer pings
    more frequent than one per 5 minutes without data (2 hours when idle) by closing the connection.
    """

    interval: float = 60.0
    timeout: float = 20.0
    permit_without_calls: bool = False

    def __post_init__(self) -> None:
        for name in ("interval", "timeout"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"keepalive {name} must be a positive number of seconds, got {value}")


@dataclass(frozen=True)
class TLSConfig:
    """TLS to the server, and mutual TLS when a client certificate and key are given.

    Each PEM is a path or its bytes. Without `ca`, the system's root certificates verify the server.
    `server_name` is the name the server's certificate must carry, for targets that are IP addresses or
    do not match it.
    """

    ca: Path | str | bytes | None = None
    cert: Path | str | bytes | None = None
    key: Path | str | bytes | None = None
    server_name: str | None = None

    def __post_init__(self) -> None:
        if (self.cert is None) != (self.key is None):
            raise ValueError("mutual TLS needs both a client certificate (cert) and its private key (key)")

    def credentials(self) -> grpc.ChannelCredentials:
        """Reads the PEM files now; raises FileNotFoundError (or another OSError) for a file that cannot be read."""
        return grpc.ssl_channel_credentials(
            root_certificates=_pem(self.ca), private_key=_pem(self.key), certificate_chain=_pem(self.cert)
        )


@dataclass(frozen=True)
class ClientSettings:
    """Everything a Client or AsyncClient needs to connect, validated when built."""

    target: str = DEFAULT_TARGET
    """A gRPC target: HOST:PORT, dns:///HOST:PORT (every address the name resolves to), ipv4:A:P,B:P, unix:PATH."""
    timeout: float | None = DEFAULT_TIMEOUT_SECONDS
    """Default deadline of every call, in seconds, retries included; None waits forever."""
    retry: RetryPolicy | None = field(default_factory=RetryPolicy)
    keepalive: Keepalive = field(default_factory=Keepalive)
    tls: TLSConfig | None = None
    auth_token: str | None = None
    """Sent as `authorization: Bearer <token>` on every call."""
    load_balancing: LoadBalancing = "round_robin"
    """round_robin spreads calls over every address of the target (every replica behind a headless service)."""
    wait_for_ready: bool = False
    """Queue calls while no server is reachable (until their deadline) instead of failing them UNAVAILABLE."""

    def __post_init__(self) -> None:
        if not self.target or self.target.strip() != self.target:
            raise ValueError(f"target must be a gRPC target like 127.0.0.1:8001, got {self.target!r}")
        if self.timeout is not None and not (math.isfinite(self.timeout) and self.timeout > 0):
            raise ValueError(f"timeout must be a positive number of seconds or None, got {self.timeout}")
        if self.load_balancing not in ("round_robin", "pick_first"):
            raise ValueError(f"load_balancing must be round_robin or pick_first, got {self.load_balancing!r}")
        if self.auth_token is not None and (not self.auth_token or any(c in self.auth_token for c in "\r\n")):
            raise ValueError("auth_token must be a non-empty single line")

    def service_config(self) -> dict[str, Any]:
        """The gRPC service config: load balancing, and the retry policy of every method of both services."""
        config: dict[str, Any] = {"loadBalancingConfig": [{self.load_balancing: {}}]}
        if self.retry is not None:
            config["methodConfig"] = [
                {
                    "name": [{"service": CLASSIFIER_SERVICE}, {"service": HEALTH_SERVICE}],
                    "retryPolicy": self.retry.as_service_config(),
                }
            ]
        return config

    def channel_options(self) -> ChannelOptions:
        options: ChannelOptions = [
            ("grpc.service_config", json.dumps(self.service_config())),
            ("grpc.service_config_disable_resolution", 1),
            ("grpc.enable_retries", 1 if self.retry is not None else 0),
            ("grpc.keepalive_time_ms", round(self.keepalive.interval * 1000)),
            ("grpc.keepalive_timeout_ms", round(self.keepalive.timeout * 1000)),
            ("grpc.keepalive_permit_without_calls", int(self.keepalive.permit_without_calls)),
            ("grpc.primary_user_agent", f"cnnserve-client/{__version__}"),
            ("grpc.max_receive_message_length", 64 * 1024 * 1024),
        ]
        if self.tls is not None and self.tls.server_name:
            options.append(("grpc.ssl_target_name_override", self.tls.server_name))
        return options

    def metadata(self, request_id: str | None) -> tuple[tuple[str, str], ...]:
        """Call metadata: the auth token, and the request id when given."""
        pairs: list[tuple[str, str]] = []
        if self.auth_token is not None:
            pairs.append(("authorization", f"Bearer {self.auth_token}"))
        if request_id is not None:
            if not request_id or any(c in request_id for c in "\r\n"):
                raise ValueError("request_id must be a non-empty single line")
            pairs.append(("x-request-id", request_id))
        return tuple(pairs)


def _duration(seconds: float) -> str:
    return f"{seconds:.9f}".rstrip("0").rstrip(".") + "s"


def _pem(value: Path | str | bytes | None) -> bytes | None:
    if value is None or isinstance(value, bytes):
        return value
    return Path(value).read_bytes()
