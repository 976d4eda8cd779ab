"""The client's exceptions.

CnnserveClientError
├── ServerError            the server answered with a gRPC error status
│   ├── ModelNotFound      NOT_FOUND: no such model or version
│   ├── InvalidInput       INVALID_ARGUMENT: the request cannot be served as sent
│   ├── Overloaded         RESOURCE_EXHAUSTED: queue full, retry with backoff
│   ├── DeadlineExceeded   DEADLINE_EXCEEDED
│   └── Unavailable        UNAVAILABLE: not ready, shutting down, or unreachable
└── ImageError             an image could not be read or encoded on the client side
"""

from __future__ import annotations

import grpc


class CnnserveClientError(Exception):
    """Base of every error the client raises."""


class ServerError(CnnserveClientError):
    """The server answered with an error status; `code` and `details` say which and why."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(f"{code.name}: {details}")
        self.code = code
        self.details = details


class ModelNotFound(ServerError):
    pass


class InvalidInput(ServerError):
    pass


class Overloaded(ServerError):
    pass


class DeadlineExceeded(ServerError):
    pass


class Unavailable(ServerError):
    pass


class ImageError(CnnserveClientError):
    """An image given to the client could not be read or encoded."""


_BY_CODE: dict[grpc.StatusCode, type[ServerError]] = {
    grpc.StatusCode.NOT_FOUND: ModelNotFound,
    grpc.StatusCode.INVALID_ARGUMENT: InvalidInput,
    grpc.StatusCode.RESOURCE_EXHAUSTED: Overloaded,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceeded,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
}


def from_rpc_error(error: grpc.RpcError) -> ServerError:
    code = error.code() if hasattr(error, "code") else grpc.StatusCode.UNKNOWN
    details = (error.details() if hasattr(error, "details") else "") or str(error)
    return _BY_CODE.get(code, ServerError)(code, details)
