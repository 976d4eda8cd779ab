"""Client settings are validated when built, and become the gRPC service config the issue asks for."""

from __future__ import annotations

import json

import grpc
import pytest

from cnnserve.client import Client, Keepalive, RetryPolicy, TLSConfig


def service_config(client: Client) -> dict:
    return json.loads(client.settings.channel_options()[0][1])


def test_the_default_service_config_retries_transient_codes_and_balances_round_robin() -> None:
    with Client("dns:///cnnserve.example:8001") as client:
        config = service_config(client)
    assert config["loadBalancingConfig"] == [{"round_robin": {}}]
    (method,) = config["methodConfig"]
    assert {"service": "cnnserve.v1.ImageClassifier"} in method["name"]
    assert {"service": "grpc.health.v1.Health"} in method["name"]
    assert method["retryPolicy"] == {
        "maxAttempts": 5,
        "initialBackoff": "0.1s",
        "maxBackoff": "2s",
        "backoffMultiplier": 2.0,
        "retryableStatusCodes": ["UNAVAILABLE", "RESOURCE_EXHAUSTED"],
    }


def test_keepalive_and_retries_become_channel_options() -> None:
    with Client(keepalive=Keepalive(interval=45, timeout=5), retry=None, load_balancing="pick_first") as client:
        options = dict(client.settings.channel_options())
        assert "methodConfig" not in service_config(client)
        assert service_config(client)["loadBalancingConfig"] == [{"pick_first": {}}]
    assert options["grpc.keepalive_time_ms"] == 45_000 and options["grpc.keepalive_timeout_ms"] == 5_000
    assert options["grpc.enable_retries"] == 0


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: RetryPolicy(max_attempts=6), "max_attempts"),
        (lambda: RetryPolicy(max_attempts=1), "retry=None"),
        (lambda: RetryPolicy(initial_backoff=0), "initial_backoff"),
        (lambda: RetryPolicy(initial_backoff=3, max_backoff=1), "max_backoff"),
        (lambda: RetryPolicy(retryable_status_codes=()), "status code"),
        (lambda: Keepalive(interval=-1), "interval"),
        (lambda: TLSConfig(key=b"key"), "both"),
        (lambda: Client("127.0.0.1:8001", timeout=0), "timeout"),
        (lambda: Client(""), "target"),
        (lambda: Client(load_balancing="random"), "load_balancing"),  # type: ignore[arg-type]
        (lambda: Client(auth_token="a\nb"), "auth_token"),
    ],
)
def test_bad_settings_are_refused_when_built(build, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build()


def test_a_tls_file_that_does_not_exist_fails_when_the_client_is_built(tmp_path) -> None:
    with pytest.raises(FileNotFoundError):
        Client(tls=TLSConfig(ca=tmp_path / "missing.pem"))


def test_retryable_codes_can_be_chosen() -> None:
    policy = RetryPolicy(retryable_status_codes=(grpc.StatusCode.UNAVAILABLE,))
    assert policy.as_service_config()["retryableStatusCodes"] == ["UNAVAILABLE"]
