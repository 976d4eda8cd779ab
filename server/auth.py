"""Optional bearer-token authentication for every RPC but health checks and reflection.

Tokens come from a file (one per line) or the environment, never from a flag, so they do not show up in process
listings, and they are never logged. Each presented token is compared with every configured token in constant
time, so response timing does not reveal how much of a token was right.
"""

from __future__ import annotations

import hmac
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import grpc

from cnnserve.server.logs import with_request_ids

OPEN_SERVICES = ("/grpc.health.v1.Health/", "/grpc.reflection.")
"""Method prefixes that need no token: probes and tooling must work without credentials."""


def read_tokens(token_file: Path | None, tokens: str | None) -> tuple[bytes, ...]:
    """The accepted tokens: non-empty lines of `token_file` plus comma-separated `tokens`."""
    found: list[str] = []
    if token_file is not None:
        found.extend(line.strip() for line in token_file.read_text().splitlines())
    if tokens:
        found.extend(part.strip() for part in tokens.split(","))
    return tuple(token.encode() for token in found if token)


_REFUSAL = "missing or invalid bearer token: send metadata 'authorization: Bearer <token>'"


async def _refuse(request: object, context: grpc.aio.ServicerContext) -> None:
    await context.abort(grpc.StatusCode.UNAUTHENTICATED, _REFUSAL)


async def _refuse_streaming(request: object, context: grpc.aio.ServicerContext) -> AsyncIterator[None]:
    await context.abort(grpc.StatusCode.UNAUTHENTICATED, _REFUSAL)
    yield  # pragma: no cover - abort raises


class BearerTokenInterceptor(grpc.aio.ServerInterceptor):
    """Refuses calls without `authorization: Bearer <token>` matching a configured token (UNAUTHENTICATED)."""

    def __init__(self, tokens: tuple[bytes, ...]) -> None:
        if not tokens:
            raise ValueError("authentication needs at least one token")
        self._tokens = tokens

    def authorised(self, metadata: tuple[tuple[str, str | bytes], ...]) -> bool:
        presented = b""
        for key, value in metadata:
            if key == "authorization":
                text = value.decode() if isinstance(value, bytes) else value
                if text[:7].lower() == "bearer ":
                    presented = text[7:].strip().encode()
                break
        matched = False
        for token in self._tokens:
            matched |= hmac.compare_digest(presented, token)
        return matched and bool(presented)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method or ""
        if handler is None or method.startswith(OPEN_SERVICES):
            return handler
        if self.authorised(tuple(handler_call_details.invocation_metadata or ())):
            return handler
        return _refusing(handler)


def _refusing(handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    """A handler of the same streaming shape as `handler` that answers UNAUTHENTICATED."""
    deserializer, serializer = handler.request_deserializer, handler.response_serializer
    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(_refuse_streaming, deserializer, serializer)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(_refuse, deserializer, serializer)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(_refuse_streaming, deserializer, serializer)
    # A refused call is not in the request log, so an id made up for it could be looked up nowhere.
    return with_request_ids(grpc.unary_unary_rpc_method_handler(_refuse, deserializer, serializer), make_up=False)
