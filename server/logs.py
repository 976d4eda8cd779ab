"""Request ids, and the optional one-line-per-request log.

Request ids: a client may send metadata `x-request-id`; the server uses it (or makes one up) and sends it back
as trailing metadata `x-request-id` on every unary call, so a client can quote it and an operator can find the
call's log line. Trailing, not initial: a call whose headers were sent is committed, and gRPC clients no longer
retry it, so an UNAVAILABLE or RESOURCE_EXHAUSTED answer must go out as a bare status (trailers only).
`with_request_ids` does that for every unary method of every service, and keeps the id and the call's deadline in
context variables of the request's own task (gRPC cancels a handler when its deadline passes;
`call_deadline_passed` lets the metrics count that as DEADLINE_EXCEEDED, not CANCELLED).

The request log (`log_request`, logger `cnnserve.server.requests`) is off unless the server runs with
`request_log` on (`cnnserve serve --request-log` or CNNSERVE_REQUEST_LOG=true), because the request path is
hot; it logs at INFO, with the request id, API, model, version, status code and duration.

The request line's fields go to the log as a mapping argument, so that JSON logs (`cnnserve._logging`, which
the command line sets up; nothing here configures logging) carry each as a field of its own.
"""

from __future__ import annotations

import inspect
import logging
import os
import time
from collections.abc import Awaitable, Callable, Sequence
from contextvars import ContextVar
from typing import Any

import grpc

REQUEST_ID_KEY = "x-request-id"
MAX_REQUEST_ID_LENGTH = 128
"""Longer ids from clients are cut to this many characters, so a client cannot bloat every log line."""

current_request_id: ContextVar[str] = ContextVar("cnnserve_request_id", default="")
"""The id of the request the running task serves; empty outside a gRPC call."""
_call_deadline: ContextVar[float | None] = ContextVar("cnnserve_call_deadline", default=None)
_DEADLINE_TOLERANCE_SECONDS = 0.005

_request_log = logging.getLogger("cnnserve.server.requests")
_REQUEST_LINE = (
    "request id=%(request_id)s api=%(api)s model=%(model)s version=%(version)s code=%(code)s "
    "duration_ms=%(duration_ms)s"
)


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


def with_request_ids(handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    """`handler` giving every call a request id (see the module docstring), when it is a unary coroutine method;
    streaming methods (health Watch, reflection) are returned untouched.

    Services are wrapped once, as they join the server (server/api/registration.py), not by an interceptor:
    grpc.aio runs an interceptor chain as coroutines on every call, and measured side by side that cost a
    front-end's loop 10-13% of its CPU per call (docs/benchmarks.md, "Generic handlers").
    """
    if handler.unary_unary is None or not inspect.iscoroutinefunction(handler.unary_unary):
        return handler
    return grpc.unary_unary_rpc_method_handler(
        _with_request_id(handler.unary_unary),
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )


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
