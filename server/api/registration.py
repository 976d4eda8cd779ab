"""How a service joins a grpc.aio server: as a generic handler only, so that accepting a call costs the same
whatever the number of methods.

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

from collections.abc import Callable, Sequence
from typing import Any

import grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2_grpc


class GenericHandlersOnly:
    """Stands in for a grpc.aio server where generated code adds a service: passes its generic handler on, drops
    the registered-method copy of the same handlers."""

    def __init__(self, server: grpc.aio.Server) -> None:
        self._server = server

    def add_generic_rpc_handlers(self, handlers: Sequence[grpc.GenericRpcHandler]) -> None:
        self._server.add_generic_rpc_handlers(handlers)

    def add_registered_method_handlers(self, service: str, handlers: dict[str, grpc.RpcMethodHandler]) -> None:
        """Dropped: the generic handler added beside it answers the same methods."""


def add_service(server: grpc.aio.Server, add_to_server: Callable[[Any, Any], None], servicer: Any) -> None:
    """Add `servicer` with its generated `add_<Service>Servicer_to_server`, as a generic handler only."""
    add_to_server(servicer, GenericHandlersOnly(server))


def add_reflection(server: grpc.aio.Server, service_names: Sequence[str]) -> None:
    """Server reflection for `service_names` (which should include reflection.SERVICE_NAME), as a generic handler
    only. (`reflection.enable_server_reflection` picks its asyncio servicer by the server's type, which
    GenericHandlersOnly is not, so the asyncio servicer is named here.)"""
    add_service(
        server,
        reflection_pb2_grpc.add_ServerReflectionServicer_to_server,
        reflection.aio.ReflectionServicer(service_names),
    )
