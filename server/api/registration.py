"""How a service joins a grpc.aio server: as a generic handler only, so that accepting a call costs the same
whatever the number of methods, with every unary method already giving its calls request ids, so that no
interceptor runs per call for them. The unary methods a servicer names in `SERIALIZED_ANSWERS` may answer with
their response already serialized (bytes), which is sent as it is (ModelInfer's usual answer:
server/api/inference_tensors.py, `probabilities_response`; Classify's: server/api/classifier.py,
`classify_answer`).

The code grpcio's compiler generates (`add_<Service>Servicer_to_server`) adds a service twice: as a generic
handler, and as "registered methods". grpc.aio's server (grpcio 1.85; grpc/grpc pull request 41796) keeps one
pending request-call task for every registered method, and for every call it accepts it runs `asyncio.wait` over
all of them, adding a callback to each and removing it again. This server's four services have 23 methods.
Added through `GenericHandlersOnly`, they leave grpc.aio one future to wait on, and it finds a call's handler by
its method name in the generic handlers (a dictionary lookup per service). Measured side by side
(docs/benchmarks.md, "Generic handlers"): a front-end's event loop spends 8-10% less CPU per ModelInfer call.
grpc/grpc pull request 43461 removes the per-call wait upstream; until a release has it, this is the cheaper path.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from typing import Any

import grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2_grpc

from cnnserve.server.logs import with_request_ids


class GenericHandlersOnly:
    """Stands in for a grpc.aio server where generated code adds a service.

    Generated code hands over the same method handlers twice: in a generic handler, then as a dictionary of
    registered methods. The dictionary is the one that can be changed, so this drops the generic handler and adds
    the dictionary's handlers, each wrapped by `with_request_ids` unless told not to, as one generic handler of
    its own; the handlers of `serialized_answers` also send bytes as they are.
    """

    def __init__(
        self,
        server: grpc.aio.Server,
        request_ids: bool = True,
        make_up_request_ids: bool = True,
        serialized_answers: Collection[str] = (),
    ) -> None:
        self._server = server
        self._request_ids = request_ids
        self._make_up = make_up_request_ids
        self._serialized_answers = serialized_answers
        self.services: list[str] = []

    def add_generic_rpc_handlers(self, handlers: Sequence[grpc.GenericRpcHandler]) -> None:
        """Dropped: `add_registered_method_handlers` adds the same methods."""

    def add_registered_method_handlers(self, service: str, handlers: dict[str, grpc.RpcMethodHandler]) -> None:
        handlers = {
            method: _answers_serialized(handler) if method in self._serialized_answers else handler
            for method, handler in handlers.items()
        }
        if self._request_ids:
            handlers = {method: with_request_ids(handler, self._make_up) for method, handler in handlers.items()}
        self._server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service, handlers),))
        self.services.append(service)


def _answers_serialized(handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    """`handler`, when unary, sending a response that is already bytes as it is, and serializing the rest."""
    serialize = handler.response_serializer
    if handler.unary_unary is None or serialize is None:
        return handler

    def bytes_as_they_are(response: Any) -> bytes:
        return response if type(response) is bytes else serialize(response)

    return grpc.unary_unary_rpc_method_handler(
        handler.unary_unary, request_deserializer=handler.request_deserializer, response_serializer=bytes_as_they_are
    )


def add_service(
    server: grpc.aio.Server,
    add_to_server: Callable[[Any, Any], None],
    servicer: Any,
    *,
    request_ids: bool = True,
    make_up_request_ids: bool = True,
) -> None:
    """Add `servicer` with its generated `add_<Service>Servicer_to_server`, as a generic handler only, its unary
    methods echoing request ids unless `request_ids` is False, and making them up for calls that bring none when
    `make_up_request_ids` (server/logs.py). Raises RuntimeError for code generated without registered methods
    (grpcio-tools before 1.62), which this cannot wrap."""
    registration = GenericHandlersOnly(
        server, request_ids, make_up_request_ids, getattr(servicer, "SERIALIZED_ANSWERS", ())
    )
    add_to_server(servicer, registration)
    if not registration.services:
        raise RuntimeError(
            f"{add_to_server.__qualname__} added no registered methods; regenerate it with grpcio-tools >= 1.62"
        )


def add_reflection(server: grpc.aio.Server, service_names: Sequence[str]) -> None:
    """Server reflection for `service_names` (which should include reflection.SERVICE_NAME), as a generic handler
    only. (`reflection.enable_server_reflection` picks its asyncio servicer by the server's type, which
    GenericHandlersOnly is not, so the asyncio servicer is named here.)"""
    add_service(
        server,
        reflection_pb2_grpc.add_ServerReflectionServicer_to_server,
        reflection.aio.ReflectionServicer(service_names),
    )
