"""The one place where server errors become gRPC statuses."""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc

from cnnserve.server.errors import CnnserveError

_log = logging.getLogger(__name__)
_Response = TypeVar("_Response")


def grpc_errors(
    method: Callable[[Any, Any, grpc.aio.ServicerContext], Awaitable[_Response]],
) -> Callable[[Any, Any, grpc.aio.ServicerContext], Awaitable[_Response]]:
    """Answer a CnnserveError with its status and message; anything else with INTERNAL, logged once."""

    @functools.wraps(method)
    async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> _Response:
        try:
            return await method(self, request, context)
        except CnnserveError as exc:
            await context.abort(exc.status_code, str(exc))
        except grpc.aio.AbortError:
            raise
        except Exception as exc:
            _log.exception("unexpected error in %s", method.__name__)
            await context.abort(grpc.StatusCode.INTERNAL, f"internal error: {exc.__class__.__name__}: {exc}")
        raise AssertionError("context.abort returned")  # pragma: no cover

    return wrapper
