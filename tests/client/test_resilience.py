"""Production behaviour against a scripted real gRPC server: gRPC's retry policy, deadlines, and call metadata.

Retries are counted on the server side, so these tests see every attempt, not just the answer.
"""

from __future__ import annotations

import threading

import grpc
import pytest

from cnnserve.client import (
    AsyncClient,
    Client,
    DeadlineExceeded,
    InvalidInput,
    Overloaded,
    ProtocolError,
    RetryPolicy,
    Unavailable,
)
from cnnserve.export import render_x
from tests.client.conftest import ScriptedServer

QUICK_RETRY = RetryPolicy(max_attempts=5, initial_backoff=0.01, max_backoff=0.05)


@pytest.mark.parametrize("status", [grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED])
def test_a_server_that_fails_then_recovers_is_retried_transparently(
    scripted: ScriptedServer, status: grpc.StatusCode
) -> None:
    scripted.classifier.fail_first, scripted.classifier.failure = 2, status
    with Client(scripted.target, retry=QUICK_RETRY) as client:
        (result,) = client.classify([render_x()], model="m")
    assert result.label == "X"
    assert scripted.classifier.calls == 3, "two failed attempts, then the one that answered"


def test_the_default_policy_retries_too(scripted: ScriptedServer) -> None:
    scripted.classifier.fail_first = 1
    with Client(scripted.target) as client:
        assert client.classify([render_x()], model="m")[0].label == "X"
    assert scripted.classifier.calls == 2


def test_retries_stop_after_max_attempts_and_the_last_status_is_raised(scripted: ScriptedServer) -> None:
    scripted.classifier.fail_first = 100
    policy = RetryPolicy(max_attempts=3, initial_backoff=0.01)
    with Client(scripted.target, retry=policy) as client, pytest.raises(Unavailable, match="scripted failure 3"):
        client.classify([render_x()], model="m")
    assert scripted.classifier.calls == 3


def test_overload_that_outlasts_the_retries_raises_overloaded(scripted: ScriptedServer) -> None:
    scripted.classifier.fail_first, scripted.classifier.failure = 100, grpc.StatusCode.RESOURCE_EXHAUSTED
    with Client(scripted.target, retry=QUICK_RETRY) as client, pytest.raises(Overloaded):
        client.classify([render_x()], model="m")
    assert scripted.classifier.calls == 5


def test_errors_that_retrying_cannot_fix_are_not_retried(scripted: ScriptedServer) -> None:
    scripted.classifier.fail_first, scripted.classifier.failure = 1, grpc.StatusCode.INVALID_ARGUMENT
    with Client(scripted.target, retry=QUICK_RETRY) as client, pytest.raises(InvalidInput):
        client.classify([render_x()], model="m")
    assert scripted.classifier.calls == 1


def test_retry_none_turns_retries_off(scripted: ScriptedServer) -> None:
    scripted.classifier.fail_first = 1
    with Client(scripted.target, retry=None) as client, pytest.raises(Unavailable):
        client.classify([render_x()], model="m")
    assert scripted.classifier.calls == 1


async def test_the_async_client_retries_with_the_same_policy(scripted: ScriptedServer) -> None:
    scripted.classifier.fail_first = 2
    async with AsyncClient(scripted.target, retry=QUICK_RETRY) as client:
        (result,) = await client.classify([render_x()], model="m")
    assert result.label == "X" and scripted.classifier.calls == 3


def test_every_call_has_the_clients_default_deadline(scripted: ScriptedServer) -> None:
    scripted.classifier.hold = threading.Event()
    with Client(scripted.target, timeout=0.2) as client, pytest.raises(DeadlineExceeded):
        client.classify([render_x()], model="m")
    assert scripted.classifier.calls == 1, "a deadline that passed is not retried"


def test_a_call_can_set_its_own_deadline(scripted: ScriptedServer) -> None:
    scripted.classifier.hold = threading.Event()
    with Client(scripted.target, timeout=60) as client, pytest.raises(DeadlineExceeded):
        client.classify([render_x()], model="m", timeout=0.2)


def test_classify_many_reports_a_deadline_per_image(scripted: ScriptedServer) -> None:
    scripted.classifier.hold = threading.Event()
    with Client(scripted.target, timeout=0.2) as client:
        outcomes = list(client.classify_many([render_x()] * 3, model="m", batch_size=2))
    assert [type(o.error) for o in outcomes] == [DeadlineExceeded] * 3


async def test_the_async_client_has_deadlines_too(scripted: ScriptedServer) -> None:
    scripted.classifier.hold = threading.Event()
    async with AsyncClient(scripted.target, timeout=0.2) as client:
        with pytest.raises(DeadlineExceeded):
            await client.classify([render_x()], model="m")


def test_wait_for_ready_waits_for_a_server_until_the_deadline(unused_port: int) -> None:
    with Client(f"127.0.0.1:{unused_port}", retry=None) as failing_fast, pytest.raises(Unavailable):
        failing_fast.health(timeout=30)
    with (
        Client(f"127.0.0.1:{unused_port}", wait_for_ready=True, timeout=0.3) as waiting,
        pytest.raises(DeadlineExceeded),
    ):
        waiting.health()


def test_request_id_and_auth_token_are_sent_as_metadata(scripted: ScriptedServer) -> None:
    with Client(scripted.target, auth_token="s3cret") as client:
        client.classify([render_x()], model="m", request_id="req-42")
        client.classify([render_x()], model="m")
    first, second = scripted.classifier.metadata
    assert first["x-request-id"] == "req-42" and first["authorization"] == "Bearer s3cret"
    assert "x-request-id" not in second and second["authorization"] == "Bearer s3cret"
    assert "cnnserve-client/" in first["user-agent"]


def test_without_a_token_no_authorization_is_sent(scripted: ScriptedServer) -> None:
    with Client(scripted.target) as client:
        client.classify([render_x()], model="m")
    assert "authorization" not in scripted.classifier.metadata[0]


def test_an_answer_that_breaks_the_contract_is_a_protocol_error(scripted: ScriptedServer) -> None:
    scripted.classifier.results_missing = 1
    with Client(scripted.target) as client:
        with pytest.raises(ProtocolError, match="1 results for 2 images"):
            client.classify([render_x(), render_x()], model="m")
        outcomes = list(client.classify_many([render_x()] * 3, model="m", batch_size=3))
    assert [type(o.error) for o in outcomes] == [ProtocolError] * 3
