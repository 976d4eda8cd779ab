"""Access: bearer tokens on every inference and admin RPC, open health and reflection, no repository changes,
tokens never logged, and loopback only unless told otherwise.

One server for the module, started without --host (so on the default interface), with tokens from a file and
from CNNSERVE_AUTH_TOKENS, repository changes disabled, the request log on and DEBUG logging, so that a token
that leaks into any log line is found.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import secrets
from collections.abc import Iterator
from pathlib import Path

import grpc
import psutil
import pytest
from google.protobuf import message_factory
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from tritonclient.grpc import service_pb2 as ipb
from tritonclient.grpc import service_pb2_grpc as ipb_grpc

from cnnserve.server import auth
from cnnserve.server.auth import BearerTokenInterceptor
from cnnserve.server.launcher import running_server
from cnnserve.v1 import classifier_pb2 as pb
from cnnserve.v1 import classifier_pb2_grpc as pb_grpc
from tests.reliability.conftest import X_PNG
from tests.servers import ServerProcess, channel_to

FILE_TOKENS = (f"file-{secrets.token_urlsafe(24)}", f"file-{secrets.token_urlsafe(24)}")
ENV_TOKENS = (f"env-{secrets.token_urlsafe(24)}", f"env-{secrets.token_urlsafe(24)}")
WRONG_TOKEN = f"wrong-{secrets.token_urlsafe(24)}"
SERVICES = (
    pb.DESCRIPTOR.services_by_name["ImageClassifier"],
    ipb.DESCRIPTOR.services_by_name["GRPCInferenceService"],
)
ADMIN_RPCS = ("RepositoryModelLoad", "RepositoryModelUnload", "RepositoryIndex")
X_REQUEST = pb.ClassifyRequest(model="xo", images=[pb.Image(encoded=X_PNG)])


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


@pytest.fixture(scope="module")
def locked_server(model_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """`cnnserve --log-level DEBUG serve` without --host, with tokens and repository changes disabled."""
    workdir = tmp_path_factory.mktemp("locked")
    token_file = workdir / "tokens"
    token_file.write_text(f"{FILE_TOKENS[0]}\n\n  {FILE_TOKENS[1]}  \n")
    environment = {name: value for name, value in os.environ.items() if name != "CNNSERVE_HOST"}
    environment["CNNSERVE_AUTH_TOKENS"] = ",".join(ENV_TOKENS)
    with running_server(
        model_repository,
        "--auth-token-file",
        str(token_file),
        "--no-allow-repository-changes",
        "--request-log",
        log_path=workdir / "server.log",
        host=None,
        global_flags=("--log-level", "DEBUG"),
        environment=environment,
        ready_timeout=60,
    ) as server:
        yield server


@pytest.fixture(scope="module")
def channel(locked_server: ServerProcess) -> Iterator[grpc.Channel]:
    with channel_to(locked_server) as channel:
        yield channel


def test_the_server_listens_on_loopback_only_unless_told_otherwise(locked_server: ServerProcess) -> None:
    server = psutil.Process(locked_server.process.pid)
    listening = {
        (c.laddr.ip, c.laddr.port)
        for process in (server, *server.children())  # the front-ends and the engine of `--frontends N`
        for c in process.net_connections(kind="inet")
        if c.status == psutil.CONN_LISTEN
    }
    assert {port for _, port in listening} >= {locked_server.grpc_port, locked_server.metrics_port}
    assert {str(ipv4(ip)) for ip, _ in listening} == {"127.0.0.1"}, listening


def ipv4(address: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """The IPv4 address behind an IPv4-mapped IPv6 address (gRPC listens on ::ffff:127.0.0.1), else itself."""
    parsed = ipaddress.ip_address(address)
    return getattr(parsed, "ipv4_mapped", None) or parsed


@pytest.mark.parametrize(
    "metadata",
    [
        pytest.param((), id="no-token"),
        pytest.param(bearer(WRONG_TOKEN), id="wrong-token"),
        pytest.param(bearer(""), id="empty-token"),
        pytest.param(bearer(FILE_TOKENS[0][:-1]), id="prefix-of-a-token"),
        pytest.param(bearer(FILE_TOKENS[0] + "x"), id="token-plus-a-character"),
        pytest.param(bearer(",".join(ENV_TOKENS)), id="the-whole-environment-variable"),
        pytest.param((("authorization", FILE_TOKENS[0]),), id="no-bearer-scheme"),
        pytest.param((("authorization", f"Basic {FILE_TOKENS[0]}"),), id="basic-scheme"),
        pytest.param((("x-api-key", FILE_TOKENS[0]),), id="another-header"),
    ],
)
def test_a_call_without_a_valid_token_is_unauthenticated(channel, metadata) -> None:
    with pytest.raises(grpc.RpcError) as refused:
        pb_grpc.ImageClassifierStub(channel).Classify(X_REQUEST, timeout=10, metadata=metadata)
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_a_refused_call_still_echoes_its_request_id(channel) -> None:
    with pytest.raises(grpc.RpcError) as refused:
        pb_grpc.ImageClassifierStub(channel).Classify(X_REQUEST, timeout=10, metadata=(("x-request-id", "refused-7"),))
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert dict(refused.value.trailing_metadata()).get("x-request-id") == "refused-7"
    assert "authorization: Bearer <token>" in refused.value.details()


@pytest.mark.parametrize("token", [*FILE_TOKENS, *ENV_TOKENS], ids=["file-1", "file-2", "env-1", "env-2"])
def test_every_token_from_the_file_and_the_environment_is_accepted(channel, token: str) -> None:
    answer = pb_grpc.ImageClassifierStub(channel).Classify(X_REQUEST, timeout=10, metadata=bearer(token))
    assert answer.results[0].top[0].label == "X"


def test_the_scheme_is_case_insensitive_as_http_says(channel) -> None:
    metadata = (("authorization", f"bearer {ENV_TOKENS[0]}"),)
    assert pb_grpc.ImageClassifierStub(channel).Classify(X_REQUEST, timeout=10, metadata=metadata).results


def call_rpc(channel: grpc.Channel, service, method, metadata) -> grpc.StatusCode:
    """Call `method` with an empty request; the status code it ends with."""
    path = f"/{service.full_name}/{method.name}"
    request_type = message_factory.GetMessageClass(method.input_type)
    response_type = message_factory.GetMessageClass(method.output_type)
    codec = {"request_serializer": request_type.SerializeToString, "response_deserializer": response_type.FromString}
    try:
        if method.client_streaming:
            responses = channel.stream_stream(path, **codec)(iter([request_type()]), timeout=10, metadata=metadata)
            list(responses)
        elif method.server_streaming:
            list(channel.unary_stream(path, **codec)(request_type(), timeout=10, metadata=metadata))
        else:
            channel.unary_unary(path, **codec)(request_type(), timeout=10, metadata=metadata)
    except grpc.RpcError as failure:
        return failure.code()
    return grpc.StatusCode.OK


def test_every_inference_and_admin_rpc_needs_a_token(channel) -> None:
    implemented = []
    for service in SERVICES:
        for method in service.methods:
            if call_rpc(channel, service, method, bearer(FILE_TOKENS[1])) == grpc.StatusCode.UNIMPLEMENTED:
                continue
            implemented.append(method.name)
            code = call_rpc(channel, service, method, ())
            assert code == grpc.StatusCode.UNAUTHENTICATED, f"{service.name}/{method.name} answered {code}"
    assert {"Classify", "ListModels", "GetModel", "ModelInfer", "ModelStreamInfer", *ADMIN_RPCS} <= set(implemented)


def test_health_and_reflection_need_no_token(channel) -> None:
    health = health_pb2_grpc.HealthStub(channel)
    assert health.Check(health_pb2.HealthCheckRequest(), timeout=10).status == health_pb2.HealthCheckResponse.SERVING
    watch = health.Watch(health_pb2.HealthCheckRequest(), timeout=10)
    assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
    watch.cancel()
    reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
    answers = reflection.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
    names = {service.name for service in next(answers).list_services_response.service}
    assert {"cnnserve.v1.ImageClassifier", "inference.GRPCInferenceService"} <= names


def test_repository_changes_are_refused_when_disabled(channel) -> None:
    inference = ipb_grpc.GRPCInferenceServiceStub(channel)
    for call, request in (
        (inference.RepositoryModelLoad, ipb.RepositoryModelLoadRequest(model_name="xo")),
        (inference.RepositoryModelUnload, ipb.RepositoryModelUnloadRequest(model_name="xo")),
    ):
        with pytest.raises(grpc.RpcError) as unauthenticated:
            call(request, timeout=10)
        assert unauthenticated.value.code() == grpc.StatusCode.UNAUTHENTICATED, "the token is checked first"
        with pytest.raises(grpc.RpcError) as refused:
            call(request, timeout=10, metadata=bearer(ENV_TOKENS[1]))
        assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "disabled" in refused.value.details() or "turned off" in refused.value.details()
    answer = pb_grpc.ImageClassifierStub(channel).Classify(X_REQUEST, timeout=10, metadata=bearer(ENV_TOKENS[1]))
    assert answer.results[0].top[0].label == "X", "xo still serves after the refused unload"


def test_a_presented_token_is_compared_with_every_token_in_constant_time(monkeypatch) -> None:
    compared: list[tuple[bytes, bytes]] = []
    real_compare = auth.hmac.compare_digest

    def recording_compare(a: bytes, b: bytes) -> bool:
        compared.append((a, b))
        return real_compare(a, b)

    monkeypatch.setattr(auth.hmac, "compare_digest", recording_compare)
    tokens = tuple(token.encode() for token in (*FILE_TOKENS, *ENV_TOKENS))
    interceptor = BearerTokenInterceptor(tokens)
    assert interceptor.authorised(bearer(FILE_TOKENS[0]))
    assert [b for _, b in compared] == list(tokens), "no early exit on the first match"
    compared.clear()
    assert not interceptor.authorised(bearer(WRONG_TOKEN))
    assert [b for _, b in compared] == list(tokens)


def test_no_token_ever_appears_in_the_log_or_the_process_arguments(locked_server: ServerProcess, channel) -> None:
    stub = pb_grpc.ImageClassifierStub(channel)
    for metadata in (bearer(WRONG_TOKEN), bearer(FILE_TOKENS[0]), bearer(ENV_TOKENS[0])):
        with contextlib.suppress(grpc.RpcError):
            stub.Classify(X_REQUEST, timeout=10, metadata=metadata)
    log = locked_server.log()
    arguments = " ".join(psutil.Process(locked_server.process.pid).cmdline())
    assert "request id=" in log and "DEBUG" in log, "the request log and DEBUG logging were on"
    for token in (*FILE_TOKENS, *ENV_TOKENS, WRONG_TOKEN):
        assert token not in log
        assert token not in arguments
