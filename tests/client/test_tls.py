"""TLS and mutual TLS between the client and `cnnserve serve`, with certificates generated for the test."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from cnnserve.cli import main
from cnnserve.client import Client, HealthStatus, TLSConfig, Unavailable
from cnnserve.export import render_x
from tests.client.certificates import CertificateAuthority, Issued
from tests.servers import ServerProcess, running_server

FAIL_FAST = {"retry": None, "timeout": 5.0}


@dataclass(frozen=True)
class Certificates:
    ca: CertificateAuthority
    server: Issued
    client: Issued
    stranger_ca: CertificateAuthority
    stranger_client: Issued


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    folder = tmp_path_factory.mktemp("certificates")
    ca = CertificateAuthority.create(folder, "test-ca")
    stranger = CertificateAuthority.create(folder, "stranger-ca")
    return Certificates(
        ca=ca,
        server=ca.issue(folder, "server", server_names=("127.0.0.1", "localhost", "cnnserve.test")),
        client=ca.issue(folder, "client", client=True),
        stranger_ca=stranger,
        stranger_client=stranger.issue(folder, "stranger-client", client=True),
    )


@pytest.fixture(scope="module")
def tls_server(
    xo_repository: Path, certificates: Certificates, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    flags = ("--tls-cert", str(certificates.server.cert), "--tls-key", str(certificates.server.key))
    with running_server(xo_repository, *flags, workdir=tmp_path_factory.mktemp("tls-server")) as server:
        yield server


@pytest.fixture(scope="module")
def mtls_server(
    xo_repository: Path, certificates: Certificates, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    flags = (
        *("--tls-cert", str(certificates.server.cert), "--tls-key", str(certificates.server.key)),
        *("--tls-client-ca", str(certificates.ca.cert)),
    )
    with running_server(xo_repository, *flags, workdir=tmp_path_factory.mktemp("mtls-server")) as server:
        yield server


def test_the_server_says_at_start_up_whether_it_serves_tls(
    server: ServerProcess, tls_server: ServerProcess, mtls_server: ServerProcess
) -> None:
    assert "PLAINTEXT" in server.log()
    assert "serving gRPC over TLS on" in tls_server.log() and "PLAINTEXT" not in tls_server.log()
    assert "over TLS with client certificates required" in mtls_server.log()


def test_a_client_that_trusts_the_ca_classifies_over_tls(tls_server: ServerProcess, certificates: Certificates) -> None:
    with Client(tls_server.target, tls=TLSConfig(ca=certificates.ca.cert)) as client:
        assert client.classify([render_x()], model="xo")[0].label == "X"


def test_pem_bytes_and_a_server_name_override_work_too(tls_server: ServerProcess, certificates: Certificates) -> None:
    tls = TLSConfig(ca=certificates.ca.cert.read_bytes(), server_name="cnnserve.test")
    with Client(tls_server.target, tls=tls) as client:
        assert client.health() is HealthStatus.SERVING


def test_a_server_name_the_certificate_lacks_is_refused(tls_server: ServerProcess, certificates: Certificates) -> None:
    tls = TLSConfig(ca=certificates.ca.cert, server_name="elsewhere.test")
    with Client(tls_server.target, tls=tls, **FAIL_FAST) as client, pytest.raises(Unavailable):
        client.health()


def test_a_client_that_does_not_trust_the_ca_is_refused(tls_server: ServerProcess, certificates: Certificates) -> None:
    tls = TLSConfig(ca=certificates.stranger_ca.cert)
    with Client(tls_server.target, tls=tls, **FAIL_FAST) as client, pytest.raises(Unavailable):
        client.health()


def test_a_plaintext_client_cannot_talk_to_a_tls_server(tls_server: ServerProcess) -> None:
    with Client(tls_server.target, **FAIL_FAST) as client, pytest.raises(Unavailable):
        client.health()


def test_mutual_tls_accepts_a_client_certificate_the_ca_signed(
    mtls_server: ServerProcess, certificates: Certificates
) -> None:
    tls = TLSConfig(ca=certificates.ca.cert, cert=certificates.client.cert, key=certificates.client.key)
    with Client(mtls_server.target, tls=tls) as client:
        assert client.classify([render_x()], model="xo")[0].label == "X"


@pytest.mark.parametrize("who", ["no client certificate", "a certificate from another CA"])
def test_mutual_tls_refuses_other_clients(mtls_server: ServerProcess, certificates: Certificates, who: str) -> None:
    tls = TLSConfig(ca=certificates.ca.cert)
    if who == "a certificate from another CA":
        tls = TLSConfig(
            ca=certificates.ca.cert, cert=certificates.stranger_client.cert, key=certificates.stranger_client.key
        )
    with Client(mtls_server.target, tls=tls, **FAIL_FAST) as client, pytest.raises(Unavailable):
        client.classify([render_x()], model="xo")


def test_a_certificate_without_its_key_is_a_usage_error(certificates: Certificates) -> None:
    with pytest.raises(ValueError, match="both"):
        TLSConfig(ca=certificates.ca.cert, cert=certificates.client.cert)


def test_the_command_line_speaks_mutual_tls(
    mtls_server: ServerProcess, certificates: Certificates, capsys: pytest.CaptureFixture[str]
) -> None:
    trusting = ["--server", mtls_server.target, "--timeout", "5", "--tls-ca", str(certificates.ca.cert)]
    identified = ["--tls-cert", str(certificates.client.cert), "--tls-key", str(certificates.client.key)]
    assert main(["health", *trusting, *identified]) == 0
    assert capsys.readouterr().out.strip() == "SERVING"
    assert main(["health", *trusting]) == 3, "no client certificate: the server cannot be used"
