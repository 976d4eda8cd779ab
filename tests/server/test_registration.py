"""Services join the gRPC server as generic handlers only (server/api/registration.py): grpc.aio then waits on one
request-call future per accepted call instead of one per registered method, every method still answers, and unary
methods echo request ids without an interceptor.

The servers run in a child interpreter: cnnserve's generated inference protos and tritonclient's (which other
tests load into this process) cannot both be loaded into one."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

_CHILD = textwrap.dedent(
    """
    import asyncio, json, sys
    from pathlib import Path

    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    from cnnserve.inference import grpc_service_pb2 as inference
    from cnnserve.inference import grpc_service_pb2_grpc as inference_grpc
    from cnnserve.server.api.registration import add_service
    from cnnserve.server.app import Server
    from cnnserve.server.settings import ServerSettings
    from cnnserve.v1 import classifier_pb2 as pb
    from cnnserve.v1 import classifier_pb2_grpc as pb_grpc


    class Live(inference_grpc.GRPCInferenceServiceServicer):
        async def ServerLive(self, request, context):
            return inference.ServerLiveResponse(live=True)


    def registered_call_waits():
        names = (getattr(task.get_coro(), "__name__", "") for task in asyncio.all_tasks())
        return sum(name == "_request_registered_call" for name in names)


    async def ask(port, cnnserve):
        answers = {"waits": registered_call_waits()}
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = inference_grpc.GRPCInferenceServiceStub(channel)
            call = stub.ServerLive(inference.ServerLiveRequest(), metadata=(("x-request-id", "registration-1"),))
            answers["live"] = (await call).live
            answers["request_id"] = dict(await call.trailing_metadata()).get("x-request-id")
            if not cnnserve:
                try:
                    await stub.ServerReady(inference.ServerReadyRequest())
                except grpc.aio.AioRpcError as exc:
                    answers["unimplemented"] = exc.code().name
                return answers
            models = await pb_grpc.ImageClassifierStub(channel).ListModels(pb.ListModelsRequest())
            answers["models"] = len(models.models)
            health = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
            answers["health"] = health_pb2.HealthCheckResponse.ServingStatus.Name(health.status)
            reflection = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo()
            await reflection.write(reflection_pb2.ServerReflectionRequest(list_services=""))
            listed = (await reflection.read()).list_services_response.service
            await reflection.done_writing()
            answers["services"] = sorted(service.name for service in listed)
        return answers


    async def plain_server(generic_only, request_ids=True):
        server = grpc.aio.server()
        if generic_only:
            add_service(
                server, inference_grpc.add_GRPCInferenceServiceServicer_to_server, Live(), request_ids=request_ids
            )
        else:
            inference_grpc.add_GRPCInferenceServiceServicer_to_server(Live(), server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        try:
            return await ask(port, cnnserve=False)
        finally:
            await server.stop(None)


    async def cnnserve_server(repository):
        settings = ServerSettings(model_repository=repository, host="127.0.0.1", grpc_port=0, metrics_port=0)
        server = Server(settings)
        await server.start()
        try:
            return await ask(server.grpc_port, cnnserve=True)
        finally:
            await server.stop()


    async def main():
        print(json.dumps({
            "generated": await plain_server(generic_only=False),
            "generic_only": await plain_server(generic_only=True),
            "without_request_ids": await plain_server(generic_only=True, request_ids=False),
            "cnnserve": await cnnserve_server(Path(sys.argv[1])),
            "methods": len(inference.DESCRIPTOR.services_by_name["GRPCInferenceService"].methods),
        }))


    asyncio.run(main())
    """
)


@pytest.fixture(scope="module")
def answers(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """What the child's servers answered: a plain grpc.aio server with the service added as generated code adds
    it and through add_service, and cnnserve's own server (an empty repository: it starts, serving no model)."""
    repository = tmp_path_factory.mktemp("empty-repository")
    completed = subprocess.run(
        [sys.executable, "-c", _CHILD, str(repository)], capture_output=True, text=True, timeout=60, check=False
    )
    assert completed.returncode == 0, completed.stderr
    return json.loads(completed.stdout.strip().splitlines()[-1])


def test_generated_registration_waits_on_a_future_per_method(answers: dict) -> None:
    assert answers["generated"]["waits"] == answers["methods"] > 10
    assert answers["generated"]["live"] is True


def test_add_service_leaves_no_per_method_wait_and_every_method_answers(answers: dict) -> None:
    generic = answers["generic_only"]
    assert generic["waits"] == 0
    assert generic["live"] is True
    assert generic["unimplemented"] == "UNIMPLEMENTED"  # a method the servicer does not define, as before


def test_add_service_gives_request_ids_without_an_interceptor_unless_told_not_to(answers: dict) -> None:
    assert answers["generated"]["request_id"] is None
    assert answers["generic_only"]["request_id"] == "registration-1"
    assert answers["without_request_ids"]["request_id"] is None
    assert answers["without_request_ids"]["waits"] == 0


def test_cnnserve_adds_every_service_generic_only_and_each_answers(answers: dict) -> None:
    server = answers["cnnserve"]
    assert server["waits"] == 0
    assert server["live"] is True and server["models"] == 0
    assert server["request_id"] == "registration-1"
    assert server["health"] == "NOT_SERVING"  # no model in the repository: not ready
    assert {"inference.GRPCInferenceService", "cnnserve.v1.ImageClassifier", "grpc.health.v1.Health"} <= set(
        server["services"]
    )
