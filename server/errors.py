"""The server's error hierarchy: each error carries the gRPC status it is answered with.

Code anywhere in the server raises these; only the transport layer (`_grpc_errors`) turns them into statuses,
so the mapping lives in one place and messages reach the caller unchanged. Messages are written for the person
reading them: what was wrong and what to do.
"""

from __future__ import annotations

import grpc


class CnnserveError(Exception):
    """Base of every error a caller may see."""

    status_code: grpc.StatusCode = grpc.StatusCode.INTERNAL


class InvalidInputError(CnnserveError):
    """The request cannot be served as sent: bad image, wrong tensor shape, top_k out of range."""

    status_code = grpc.StatusCode.INVALID_ARGUMENT


class ModelNotFoundError(CnnserveError):
    """No such model or version in the repository."""

    status_code = grpc.StatusCode.NOT_FOUND


class QueueFullError(CnnserveError):
    """The model's queue is at its bound; the caller should back off and retry."""

    status_code = grpc.StatusCode.RESOURCE_EXHAUSTED


class DeadlineExceededError(CnnserveError):
    """The request's deadline passed before its batch could run; it was not computed."""

    status_code = grpc.StatusCode.DEADLINE_EXCEEDED


class UnavailableError(CnnserveError):
    """The model is not ready, or the server is shutting down; retrying later or elsewhere may succeed."""

    status_code = grpc.StatusCode.UNAVAILABLE


class VersionRetiredError(UnavailableError):
    """The engine no longer serves the version a front-end chose: a reload or unload raced the request. The
    front-end has the new catalog by the time it hears this, and chooses again."""


class InferenceError(CnnserveError):
    """The model failed while running a batch; every caller of that batch gets this."""

    status_code = grpc.StatusCode.INTERNAL


class ModelLoadFailedError(CnnserveError):
    """An explicit load or reload failed; any version that served before keeps serving."""

    status_code = grpc.StatusCode.INTERNAL


class RepositoryChangesDisabledError(CnnserveError):
    """Load and unload calls are turned off on this server (allow_repository_changes=false)."""

    status_code = grpc.StatusCode.PERMISSION_DENIED


class SharedMemoryRegionExistsError(CnnserveError):
    """A shared memory region of that name is registered already."""

    status_code = grpc.StatusCode.ALREADY_EXISTS


class SharedMemoryRegionNotFoundError(CnnserveError):
    """No shared memory region of that name is registered."""

    status_code = grpc.StatusCode.NOT_FOUND


class SharedMemoryDisabledError(CnnserveError):
    """System shared memory is turned off on this server."""

    status_code = grpc.StatusCode.UNIMPLEMENTED


class TooManySharedMemoryRegionsError(CnnserveError):
    """The server holds as many shared memory regions as it allows; the client should unregister some."""

    status_code = grpc.StatusCode.RESOURCE_EXHAUSTED


def error_named(name: str, message: str) -> CnnserveError:
    """The CnnserveError of class `name` with `message`, as another process of the server raised it (an
    InferenceError when the name is not one of ours)."""
    pending = [CnnserveError]
    while pending:
        cls = pending.pop()
        if cls.__name__ == name:
            return cls(message)
        pending.extend(cls.__subclasses__())
    return InferenceError(f"{name}: {message}")


def status_of(exc: BaseException) -> grpc.StatusCode:
    """The gRPC status an exception is answered with: its own for CnnserveError, INTERNAL for anything else."""
    return exc.status_code if isinstance(exc, CnnserveError) else grpc.StatusCode.INTERNAL


class ModelLoadError(Exception):
    """A model version could not be loaded; it is reported not ready with this message as the reason."""


class ExecutionProviderError(Exception):
    """The requested execution provider cannot be used here (for example CUDA required on a CPU machine)."""
