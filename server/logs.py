"""Structured logs: JSON lines for log pipelines, request ids, and the optional one-line-per-request log.

Request ids: a client may send metadata `x-request-id`; the server uses it (or makes one up) and sends it back
as trailing metadata `x-request-id` on every unary call, so a client can quote it and an operator can find the
call's log line. Trailing, not initial: a call whose headers were sent is committed, and gRPC clients no longer
retry it, so an UNAVAILABLE or RESOURCE_EXHAUSTED answer must go out as a bare status (trailers only).
`RequestIdInterceptor` does that for every service, and keeps
the id and the call's deadline in context variables of the request's own task (gRPC cancels a handler when its
deadline passes; `call_deadline_passed` lets the metrics count that as DEADLINE_EXCEEDED, not CANCELLED).

The request log (`log_request`, logger `cnnserve.server.requests`) is off unless the server runs with
`request_log` on (`cnnserve serve --request-log` or CNNSERVE_REQUEST_LOG=true), because the request path is
hot; it logs at INFO, with the request id, API, model, version, status code and duration.

The library never configures logging itself: the command line calls `configure_logging`, with the format from
`--log-format` or CNNSERVE_LOG_FORMAT. In JSON format every record is one JSON object per line; log calls that
pass a mapping as their argument (`log.info("... %(model)s", {"model": name})`) get its keys as fields too.
"""

from __future__ import annotations

import inspect
import json
import logging
import os
import sys
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

import grpc

REQUEST_ID_KEY = "x-request-id"
MAX_REQUEST_ID_LENGTH = 128
"""Longer ids from clients are cut to this many characters, so a client cannot bloat every log line."""
LOG_FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

current_request_id: ContextVar[str] = ContextVar("cnnserve_request_id", default="")
"""The id of the request the running task serves; empty outside a gRPC call."""
_call_deadline: ContextVar[float | None] = ContextVar("cnnserve_call_deadline", default=None)
_DEADLINE_TOLERANCE_SECONDS = 0.005
_MAX_CACHED_HANDLERS = 256
"""Methods are few; the bound only matters if another interceptor made a new handler per call."""

_request_log = logging.getLogger("cnnserve.server.requests")
_REQUEST_LINE = (
    "request id=%(request_id)s api=%(api)s model=%(model)s version=%(version)s code=%(code)s "
    "duration_ms=%(duration_ms)s"
)
_RESERVED_FIELDS = frozenset({"time", "level", "logger", "message", "exception", "stack"})


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time (UTC, ISO 8601), level, logger, message, mapping arguments, exception."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if isinstance(record.args, Mapping):
            entry.update((key, value) for key, value in record.args.items() if key not in _RESERVED_FIELDS)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


def configure_logging(level: str, log_format: str) -> None:
    """Send log records at `level` and above to stderr, as text lines or JSON lines ("text" or "json").

    Raises ValueError for another format, naming the accepted ones.
    """
    if log_format not in LOG_FORMATS:
        raise ValueError(f"log format must be one of {', '.join(LOG_FORMATS)}, got {log_format!r}")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT))
    logging.basicConfig(level=level, handlers=[handler], force=True)


def request_id_from(metadata: Sequence[tuple[str, str | bytes]] | None) -> str:
    """The caller's `x-request-id`, cut to MAX_REQUEST_ID_LENGTH characters, or a new random id (32 hex digits)."""
    for key, value in metadata or ():
        if key == REQUEST_ID_KEY and value:
            text = value if isinstance(value, str) else value.decode("ascii", "replace")
            return text[:MAX_REQUEST_ID_LENGTH]
    return os.urandom(16).hex()


_Behavior = Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]


def _with_request_id(behavior: _Behavior) -> _Behavior:
    async def with_request_id(request: Any, context: grpc.aio.ServicerContext) -> Any:
        request_id = request_id_from(context.invocation_metadata())
        current_request_id.set(request_id)
        remaining = context.time_remaining()
        if remaining is not None:
            _call_deadline.set(time.monotonic() + remaining)
        context.set_trailing_metadata(((REQUEST_ID_KEY, request_id),))
        return await behavior(request, context)

    return with_request_id


def call_deadline_passed() -> bool:
    """Whether the running gRPC call's own deadline has passed (False for calls without one).

    gRPC cancels a handler whose deadline expires, so the handler sees CancelledError either way; this tells a
    deadline from a caller that gave up.
    """
    deadline = _call_deadline.get()
    return deadline is not None and time.monotonic() >= deadline - _DEADLINE_TOLERANCE_SECONDS


class RequestIdInterceptor(grpc.aio.ServerInterceptor):
    """Gives every unary call a request id and echoes it as trailing metadata (see the module docstring).

    Streaming calls (health Watch, reflection) pass through untouched. Wrapped handlers are built once per
    method and reused, so a call costs the metadata lookup and one extra coroutine frame.
    """

    def __init__(self) -> None:
        self._wrapped: dict[grpc.RpcMethodHandler, grpc.RpcMethodHandler] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None or handler.unary_unary is None or not inspect.iscoroutinefunction(handler.unary_unary):
            return handler
        wrapped = self._wrapped.get(handler)
        if wrapped is None:
            wrapped = grpc.unary_unary_rpc_method_handler(
                _with_request_id(handler.unary_unary),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
            if len(self._wrapped) < _MAX_CACHED_HANDLERS:
                self._wrapped[handler] = wrapped
        return wrapped


def log_request(
    *,
    api: str,
    model: str,
    version: str,
    code: grpc.StatusCode,
    seconds: float,
    error: BaseException | None = None,
) -> None:
    """Log one finished request at INFO on `cnnserve.server.requests` (callers check `request_log` first).

    `model` and `version` are the metric labels of the request ("unknown" when the server could not serve it).
    """
    fields: dict[str, Any] = {
        "request_id": current_request_id.get(),
        "api": api,
        "model": model,
        "version": version,
        "code": code.name,
        "duration_ms": round(seconds * 1000, 3),
    }
    if error is None:
        _request_log.info(_REQUEST_LINE, fields)
    else:
        fields["error"] = str(error)
        _request_log.info(_REQUEST_LINE + " error=%(error)r", fields)
