"""KServe's REST health paths on the metrics port, and the readiness policy they share with gRPC health.

Probes that cannot speak TLS (Kubernetes' native gRPC probes, a container health check) ask these over plain
HTTP. The repository here holds `xo`, `mnist_net` and `broken` (a model file of random bytes), so the strict
default policy keeps the server not ready, and `--required-models` lets an operator serve what did load.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tritonclient.grpc import service_pb2 as ipb
from tritonclient.grpc import service_pb2_grpc as ipb_grpc

from cnnserve.repository_layout import MODEL_FILE
from cnnserve.v1 import classifier_pb2 as pb
from cnnserve.v1 import classifier_pb2_grpc as pb_grpc
from tests.client.certificates import CertificateAuthority
from tests.conftest import png_bytes
from tests.servers import ServerProcess, queue_depth, running_server, wait_until

HEALTHCHECK = Path(__file__).resolve().parents[2] / "deploy" / "docker" / "healthcheck.py"
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def http_get(server: ServerProcess, path: str, method: str = "GET") -> tuple[int, str]:
    """Status and body of an HTTP request to the metrics port."""
    request = urllib.request.Request(f"http://127.0.0.1:{server.metrics_port}{path}", method=method)
    try:
        with urllib.request.urlopen(request, timeout=5) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def grpc_health(server: ServerProcess) -> int:
    with grpc.insecure_channel(server.target) as channel:
        return health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5).status


def container_health_check(env: dict[str, str]) -> int:
    """The exit code of the container image's HEALTHCHECK script, run here with `env`."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("CNNSERVE_")}
    return subprocess.run(
        [sys.executable, str(HEALTHCHECK)], env={**clean, **env}, capture_output=True, timeout=30, check=False
    ).returncode


@pytest.fixture(scope="module")
def repository_with_a_broken_model(model_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("broken-repository")
    for name in ("xo", "mnist_net"):
        shutil.copytree(model_repository / name, root / name)
    (root / "broken" / "1").mkdir(parents=True)
    (root / "broken" / "1" / MODEL_FILE).write_bytes(np.random.default_rng(0).bytes(4096))
    return root


@pytest.fixture(scope="module")
def strict_server(repository_with_a_broken_model: Path, tmp_path_factory) -> Iterator[ServerProcess]:
    with running_server(repository_with_a_broken_model, workdir=tmp_path_factory.mktemp("strict")) as server:
        yield server


def test_a_model_that_failed_to_load_keeps_a_strict_server_not_ready(strict_server: ServerProcess) -> None:
    assert http_get(strict_server, "/v2/health/live") == (200, "live\n")
    status, body = http_get(strict_server, "/v2/health/ready")
    assert (status, body) == (503, "not ready: waiting for broken\n")
    assert grpc_health(strict_server) == NOT_SERVING
    with grpc.insecure_channel(strict_server.target) as channel:
        assert not ipb_grpc.GRPCInferenceServiceStub(channel).ServerReady(ipb.ServerReadyRequest()).ready


def test_each_model_answers_its_own_readiness(strict_server: ServerProcess) -> None:
    assert http_get(strict_server, "/v2/models/xo/ready")[0] == 200
    assert http_get(strict_server, "/v2/models/xo/versions/1/ready")[0] == 200
    assert http_get(strict_server, "/v2/models/broken/ready")[0] == 503
    assert http_get(strict_server, "/v2/models/xo/versions/7/ready") == (404, "unknown model 'xo' version 7\n")
    assert http_get(strict_server, "/v2/models/nope/ready") == (404, "unknown model 'nope'\n")


def test_the_metrics_port_serves_metrics_and_nothing_else(strict_server: ServerProcess) -> None:
    status, metrics = http_get(strict_server, "/metrics")
    assert status == 200
    assert 'cnnserve_model_load_failures_total{model="broken"} 1.0' in metrics
    assert 'cnnserve_model_load_failures_total{model="xo"} 0.0' in metrics, "exported from the first load on"
    for path in ("/", "/v2", "/v2/health", "/metrics/extra", "/v2/models/xo", "/favicon.ico"):
        assert http_get(strict_server, path)[0] == 404, path
    assert http_get(strict_server, "/v2/health/ready", method="POST")[0] == 405


def test_required_models_let_a_replica_serve_what_loaded(repository_with_a_broken_model: Path, tmp_path) -> None:
    flags = ("--required-models", "xo", "mnist_net")
    with running_server(repository_with_a_broken_model, *flags, workdir=tmp_path) as server:
        assert http_get(server, "/v2/health/ready") == (200, "ready\n")
        assert grpc_health(server) == SERVING
        assert http_get(server, "/v2/models/broken/ready")[0] == 503


def test_a_required_model_missing_from_the_repository_keeps_the_server_not_ready(
    model_repository: Path, tmp_path: Path
) -> None:
    with running_server(model_repository, "--required-models", "xo", "resnet", workdir=tmp_path) as server:
        assert http_get(server, "/v2/health/ready") == (503, "not ready: waiting for resnet\n")
        assert grpc_health(server) == NOT_SERVING
        assert "required models ['resnet'] are not in the repository" in server.log()


def test_a_tls_server_is_probed_over_plain_http(model_repository: Path, tmp_path: Path) -> None:
    ca = CertificateAuthority.create(tmp_path, "probe-ca")
    issued = ca.issue(tmp_path, "server", server_names=("127.0.0.1",))
    flags = ("--tls-cert", str(issued.cert), "--tls-key", str(issued.key))
    with running_server(model_repository, *flags, workdir=tmp_path / "server") as server:
        assert http_get(server, "/v2/health/ready") == (200, "ready\n")
        assert http_get(server, "/v2/health/live")[0] == 200
        ports = {"CNNSERVE_GRPC_PORT": str(server.grpc_port), "CNNSERVE_METRICS_PORT": str(server.metrics_port)}
        assert container_health_check(ports) != 0, "plaintext gRPC cannot reach a TLS server"
        assert container_health_check({**ports, "CNNSERVE_TLS_CERT": str(issued.cert)}) == 0, "over HTTP it can"


def test_readiness_turns_503_as_soon_as_a_drain_begins(model_repository: Path, tmp_path: Path) -> None:
    flags = ("--max-queue-delay-ms", "3000", "--no-adaptive-queue-delay", "--max-batch-size", "64")
    with running_server(model_repository, *flags, workdir=tmp_path) as server:
        assert http_get(server, "/v2/health/ready")[0] == 200
        with grpc.insecure_channel(server.target) as channel:
            stub = pb_grpc.ImageClassifierStub(channel)
            digit = pb.Image(encoded=png_bytes(np.zeros((28, 28), np.uint8)))
            queued = stub.Classify.future(pb.ClassifyRequest(model="mnist_net", images=[digit]), timeout=30)
            wait_until(lambda: queue_depth(server, "mnist_net") == 1)
            server.process.terminate()
            wait_until(lambda: http_get(server, "/v2/health/ready")[0] == 503, "ready must turn 503 on SIGTERM")
            assert http_get(server, "/v2/health/live")[0] == 200, "live while draining"
            assert queued.result().results[0].top, "the queued call is answered"
        assert server.process.wait(timeout=30) == 0
