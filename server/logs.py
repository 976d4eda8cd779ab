"""Request ids, and the optional one-line-per-request log.

Request ids: a client may send metadata `x-request-id`; the server sends it back as trailing metadata
`x-request-id` on every unary call, so a client can quote it and an operator can find the call's log line. When
the server logs requests (`request_log`), it makes up an id for a call that brings none and sends that back too;
otherwise it does not, since no log would hold it, and sending it costs a front-end's event loop about 5% of its
CPU per call (docs/benchmarks.md, "Less work per call"). Trailing, not initial: a call whose headers were sent
is committed, and gRPC clients no longer retry it, so an UNAVAILABLE or RESOURCE_EXHAUSTED answer must go out as
a bare status (trailers only). `with_request_ids` does that for every unary method of every service, and keeps
the id and the call's deadline in context variables of the request's own task (gRPC cancels a handler when its
deadline passes; `call_deadline_passed` lets the metrics count that as DEADLINE_EXCEEDED, not CANCELLED).

The request log (`log_request`, logger `cnnserve.server.requests`) is off unless the server runs with
`request_log` on (`cnnserve serve --request-log` or CNNSERVE_REQUEST_LOG=true), because the request path is
hot; it logs at INFO, with the request id, API, model, version, status code and duration.

The request line's fields go to the log as a mapping argument, so that JSON logs (`cnnserve._logging`, which
the command line sets up; nothing here configures logging) carry each as a field of its own.
"""

from __future__ import annotations

import inspect
import itertools
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


def request_id_from(metadata: Sequence[tuple[str, str | bytes]] | None, make_up: bool = True) -> str:
    """The caller's `x-request-id`, cut to MAX_REQUEST_ID_LENGTH characters; without one, a new id (32 hex
    digits) when `make_up`, else ""."""
    for key, value in metadata or ():
        if key == REQUEST_ID_KEY and value:
            text = value if isinstance(value, str) else value.decode("ascii", "replace")
            return text[:MAX_REQUEST_ID_LENGTH]
    return new_request_id() if make_up else ""


def new_request_id() -> str:
    """An id no other call of any server process gets: this process's random 64-bit prefix, then a count (32 hex
    digits in all). Unique, not secret: it names a call in logs. A counter instead of 16 random bytes per call
    saves a system call on every request that brings no id of its own."""
    return f"{_id_prefix}{next(_id_count):016x}"


def _new_id_prefix() -> None:
    global _id_prefix, _id_count
    _id_prefix, _id_count = os.urandom(8).hex(), itertools.count()


_id_prefix, _id_count = "", itertools.count()
_new_id_prefix()
os.register_at_fork(after_in_child=_new_id_prefix)


_Behavior = Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]


def _with_request_id(behavior: _Behavior, make_up: bool) -> _Behavior:
    async def with_request_id(request: Any, context: grpc.aio.ServicerContext) -> Any:
        remaining = context.time_remaining()
        if remaining is not None:
            _call_deadline.set(time.monotonic() + remaining)
        request_id = request_id_from(context.invocation_metadata(), make_up)
        if request_id:
            current_request_id.set(request_id)
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


def with_request_ids(handler: grpc.RpcMethodHandler, make_up: bool = True) -> grpc.RpcMethodHandler:
    """`handler` echoing every call's request id (see the module docstring), and making one up for calls that
    bring none when `make_up`, when it is a unary coroutine method; streaming methods (health Watch, reflection)
    are returned untouched.

    Services are wrapped once, as they join the server (server/api/registration.py), not by an interceptor:
    grpc.aio runs an interceptor chain as coroutines on every call, and measured side by side that cost a
    front-end's loop 10-13% of its CPU per call (docs/benchmarks.md, "Generic handlers").
    """
    if handler.unary_unary is None or not inspect.iscoroutinefunction(handler.unary_unary):
        return handler
    return grpc.unary_unary_rpc_method_handler(
        _with_request_id(handler.unary_unary, make_up),
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
