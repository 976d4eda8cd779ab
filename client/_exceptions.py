"""The client's exceptions: one hierarchy, and the one place where gRPC status codes become exceptions.

CnnserveClientError
├── StatusError              a call ended with a gRPC error status (`code`, `details`)
│   ├── ModelNotFound        NOT_FOUND: no such model or version
│   ├── InvalidInput         INVALID_ARGUMENT: an image or an argument the server cannot serve as sent
│   ├── Overloaded           RESOURCE_EXHAUSTED: the model's queue stayed full through every retry
│   ├── DeadlineExceeded     DEADLINE_EXCEEDED: the call's deadline passed (retries included)
│   ├── Unavailable          UNAVAILABLE: unreachable, not ready or shutting down, through every retry
│   ├── Unauthenticated      UNAUTHENTICATED: missing or rejected auth token
│   └── PermissionDenied     PERMISSION_DENIED: the token may not use this model
├── ImageError               an image could not be read or encoded on the client side (nothing was sent)
└── ProtocolError            the server's answer broke the API contract (e.g. a result count that does not match)

Transient statuses (UNAVAILABLE, RESOURCE_EXHAUSTED) are retried by gRPC itself before they surface here.
"""

from __future__ import annotations

import grpc


class CnnserveClientError(Exception):
    """Base of every error the client raises: `except CnnserveClientError` catches them all."""


class StatusError(CnnserveClientError):
    """A call ended with an error status; `code` says which and `details` says why, in the server's words."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(f"{code.name}: {details}")
        self.code = code
        self.details = details


class ModelNotFound(StatusError):
    """NOT_FOUND: the server has no such model or version."""


class InvalidInput(StatusError):
    """INVALID_ARGUMENT: the request cannot be served as sent; retrying will not help."""


class Overloaded(StatusError):
    """RESOURCE_EXHAUSTED: the model's queue was full on every attempt; slow down or add replicas."""


class DeadlineExceeded(StatusError):
    """DEADLINE_EXCEEDED: the call took longer than its timeout."""


class Unavailable(StatusError):
    """UNAVAILABLE: no server could be reached, or it was not ready, on every attempt."""


class Unauthenticated(StatusError):
    """UNAUTHENTICATED: the server wants a valid auth token."""


class PermissionDenied(StatusError):
    """PERMISSION_DENIED: the auth token is valid but not allowed to do this."""


class ImageError(CnnserveClientError):
    """An image given to the client could not be read or encoded, so it was not sent."""


class ProtocolError(CnnserveClientError):
    """The server answered, but not as the API promises."""


_BY_CODE: dict[grpc.StatusCode, type[StatusError]] = {
    grpc.StatusCode.NOT_FOUND: ModelNotFound,
    grpc.StatusCode.INVALID_ARGUMENT: InvalidInput,
    grpc.StatusCode.RESOURCE_EXHAUSTED: Overloaded,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceeded,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
}


def from_rpc_error(error: grpc.RpcError) -> StatusError:
    """The StatusError subclass for a failed call's code, carrying its details."""
    code_of = getattr(error, "code", None)
    details_of = getattr(error, "details", None)
    code = code_of() if callable(code_of) else grpc.StatusCode.UNKNOWN
    details = (details_of() if callable(details_of) else None) or str(error)
    return _BY_CODE.get(code, StatusError)(code, details)
