"""The container images, built and run: the CPU server image serving the model image's repository under Docker and,
as the CPU overlay's Deployment, under `podman kube play`; the CUDA image built. No registry is involved:
tests/tools/prepare_container_build.sh leaves a Docker daemon, a stand-in base image (Debian bookworm with Python
3.11) and the wheels the images install, and the Dockerfiles take those through their build arguments
(PYTHON_IMAGE, CUDA_IMAGE with PYTHON_FROM=base, BASE_IMAGE, WHEELS_IMAGE with PIP_NO_INDEX). Every container,
volume and image made here is removed afterwards; the prepared ones stay (and BuildKit's cache).
"""

from __future__ import annotations

import copy
import json
import re
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from cnnserve.export import render_o, render_x
from tests.conftest import png_bytes

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

REPO = Path(__file__).resolve().parents[2]
DOCKER = REPO / "deploy" / "docker"
BUILD_TIMEOUT = 600
READY_TIMEOUT = 120
STOP_TIMEOUT = 30
"""`docker stop --time`: longer than the server's 20 s drain, as deploy/README.md says."""


def build(engine, dockerfile: str, context: Path, tag: str, log: Path, **build_args: str) -> None:
    """`docker build` with BuildKit and no network use; fails the test with the end of the build's output."""
    args = [arg for name, value in build_args.items() for arg in ("--build-arg", f"{name}={value}")]
    result = engine(
        "build", "--progress=plain", "-f", str(DOCKER / dockerfile), "-t", tag, *args, str(context),
        timeout=BUILD_TIMEOUT, check=False,
    )  # fmt: skip
    log.write_text(result.stdout + result.stderr)
    assert result.returncode == 0, f"building {dockerfile} failed (full output: {log}):\n{result.stderr[-4000:]}"


@pytest.fixture(scope="module")
def run_id() -> str:
    return uuid.uuid4().hex[:8]


@pytest.fixture(scope="module")
def cpu_image(container_engine, run_id: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    tag = f"cnnserve-test/cpu:{run_id}"
    log = tmp_path_factory.mktemp("cpu-image") / "build.log"
    try:
        build(
            container_engine, "Dockerfile.cpu", REPO, tag, log,
            PYTHON_IMAGE=container_engine.base_image, WHEELS_IMAGE=container_engine.wheels_image, PIP_NO_INDEX="1",
        )  # fmt: skip
        yield tag
    finally:
        container_engine("rmi", "--force", tag, check=False)


@pytest.fixture(scope="module")
def model_image(
    container_engine, run_id: str, model_repository: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """The suite's model repository (xo and mnist_net) as a model image, on the stand-in base."""
    tag = f"cnnserve-test/models:{run_id}"
    log = tmp_path_factory.mktemp("model-image") / "build.log"
    try:
        build(
            container_engine, "Dockerfile.models", model_repository, tag, log, BASE_IMAGE=container_engine.base_image
        )  # fmt: skip
        yield tag
    finally:
        container_engine("rmi", "--force", tag, check=False)


@pytest.fixture(scope="module")
def models_volume(container_engine, model_image: str, run_id: str) -> Iterator[str]:
    """A volume holding the model image's /models, as the Deployment's init container copies it into an emptyDir.

    Docker fills an empty named volume from the image's content at the mount point on first use.
    """
    name = f"cnnserve-test-models-{run_id}"
    try:
        container_engine("run", "--rm", "--volume", f"{name}:/models", model_image, "true")
        yield name
    finally:
        container_engine("volume", "rm", "--force", name, check=False)


@dataclass
class ServerContainer:
    """A server container, publishing its gRPC and metrics ports on 127.0.0.1 only."""

    name: str
    grpc_target: str
    metrics_url: str

    def health(self, timeout: float = 5) -> str:
        with grpc.insecure_channel(self.grpc_target) as channel:
            answer = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=timeout)
        return health_pb2.HealthCheckResponse.ServingStatus.Name(answer.status)


def health_or_error(server: ServerContainer) -> str:
    """The serving status, or the gRPC status code of the failed Check."""
    try:
        return server.health(timeout=2)
    except grpc.RpcError as error:
        return error.code().name


def published(engine, name: str, port: int) -> str:
    """The host address Docker published the container's `port` on, checked to be loopback only."""
    addresses = engine("port", name, f"{port}/tcp").stdout.split()
    assert addresses and all(address.startswith("127.0.0.1:") for address in addresses), addresses
    return addresses[0]


def inspect(engine, name: str, template: str) -> str:
    return engine("inspect", "--format", template, name).stdout.strip()


def container_failed(engine, name: str, what: str) -> NoReturn:
    logs = engine("logs", name, check=False)
    pytest.fail(f"{what}; the container's log ends:\n{(logs.stdout + logs.stderr)[-4000:]}")


def start_server(engine, image: str, volume: str, name: str) -> ServerContainer:
    """Run the server image as the Deployment runs it (its own user, read-only root, no capabilities), wait until
    grpc.health.v1 says SERVING from the host and Docker's own HEALTHCHECK (healthcheck.py) says healthy."""
    engine(
        "run", "--detach", "--name", name,
        "--read-only", "--tmpfs", "/tmp", "--cap-drop", "ALL",
        "--security-opt", "no-new-privileges", "--stop-timeout", str(STOP_TIMEOUT),
        "--publish", "127.0.0.1::8001", "--publish", "127.0.0.1::8002",
        "--mount", f"type=volume,source={volume},target=/models,readonly",
        "--health-interval", "2s",
        image,
    )  # fmt: skip
    if inspect(engine, name, "{{.State.Running}}") != "true":
        container_failed(engine, name, "the server container exited at once")
    server = ServerContainer(name, published(engine, name, 8001), f"http://{published(engine, name, 8002)}/metrics")
    deadline = time.monotonic() + READY_TIMEOUT
    status = health = "?"
    while time.monotonic() < deadline:
        if inspect(engine, name, "{{.State.Running}}") != "true":
            container_failed(engine, name, "the server container exited")
        status = health_or_error(server)
        health = inspect(engine, name, "{{.State.Health.Status}}")
        if status == "SERVING" and health == "healthy":
            return server
        time.sleep(0.5)
    container_failed(engine, name, f"not ready in {READY_TIMEOUT}s: health {status}, docker health {health}")


@pytest.fixture(scope="module")
def server(container_engine, cpu_image: str, models_volume: str, run_id: str) -> Iterator[ServerContainer]:
    name = f"cnnserve-test-{run_id}"
    try:
        yield start_server(container_engine, cpu_image, models_volume, name)
    finally:
        container_engine("rm", "--force", "--volumes", name, check=False)


# --- the CPU image, serving the model image ----------------------------------------------------------------


def test_the_server_runs_as_uid_10001(container_engine, cpu_image: str, server: ServerContainer) -> None:
    assert inspect(container_engine, cpu_image, "{{.Config.User}}") == "10001:10001"
    status = container_engine("exec", server.name, "cat", "/proc/1/status").stdout
    ids = re.findall(r"^(?:Uid|Gid):\s+(.*)$", status, re.MULTILINE)
    assert {number for line in ids for number in line.split()} == {"10001"}, status


def test_health_is_serving_from_the_host(server: ServerContainer) -> None:
    assert server.health() == "SERVING"


def classify(server: ServerContainer, model: str, folder: Path) -> dict[str, str]:
    """`cnnserve classify --json` from this venv against the container: {file name: label}."""
    command = [str(Path(sys.executable).parent / "cnnserve"), "classify", "--server", server.grpc_target, "--json"]
    done = subprocess.run([*command, "--model", model, str(folder)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    return {Path(line["path"]).name: line["label"] for line in lines}


def test_cnnserve_classify_labels_the_digits(server: ServerContainer, digits, tmp_path: Path) -> None:
    images, labels = digits
    picks = np.arange(0, len(images), 60)[:30]
    for index in picks:
        (tmp_path / f"digit-{index:04d}.png").write_bytes(png_bytes(images[index]))
    answers = classify(server, "mnist_net", tmp_path)
    predicted = np.array([int(answers[f"digit-{index:04d}.png"]) for index in picks])
    assert (predicted == labels[picks]).mean() >= 0.8


def test_metrics_are_scraped_over_http(server: ServerContainer, tmp_path: Path) -> None:
    (tmp_path / "x.png").write_bytes(png_bytes(render_x()))
    (tmp_path / "o.png").write_bytes(png_bytes(render_o()))
    assert classify(server, "xo", tmp_path) == {"x.png": "X", "o.png": "O"}
    with urllib.request.urlopen(server.metrics_url, timeout=10) as answer:
        assert answer.status == 200
        samples = [s for family in text_string_to_metric_families(answer.read().decode()) for s in family.samples]
    ready = {s.labels["model"]: s.value for s in samples if s.name == "cnnserve_model_ready"}
    assert ready == {"xo": 1.0, "mnist_net": 1.0}
    served = [s for s in samples if s.name == "cnnserve_requests_total" and s.labels["model"] == "xo"]
    assert sum(s.value for s in served if s.labels["code"] == "OK") >= 1, served


def test_docker_stop_drains_and_exits_0(container_engine, cpu_image: str, models_volume: str, run_id: str) -> None:
    name = f"cnnserve-test-stop-{run_id}"
    try:
        start_server(container_engine, cpu_image, models_volume, name)
        started = time.monotonic()
        container_engine("stop", "--time", str(STOP_TIMEOUT), name, timeout=STOP_TIMEOUT + 30)
        assert time.monotonic() - started < STOP_TIMEOUT, "SIGTERM did not stop it: it was killed"
        state = json.loads(inspect(container_engine, name, "{{json .State}}"))
        output = container_engine("logs", name)
        logs = output.stdout + output.stderr
        assert state["ExitCode"] == 0 and not state["OOMKilled"], (state, logs[-4000:])
        messages = [json.loads(line)["message"] for line in logs.splitlines() if line.startswith("{")]
        draining = next(i for i, message in enumerate(messages) if message.startswith("shutting down"))
        assert "stopped" in messages[draining:], messages
    finally:
        container_engine("rm", "--force", name, check=False)


# --- the CUDA image, built (it needs a GPU to serve) -----------------------------------------------------------


def test_the_cuda_image_builds_with_onnxruntime_gpu_only(container_engine, run_id: str, tmp_path: Path) -> None:
    """Built on the stand-in base with its own Python (PYTHON_FROM=base) instead of nvidia/cuda and uv's Python,
    which cannot be pulled here; the install step and the runtime stage are the ones the real image uses."""
    tag = f"cnnserve-test/cuda:{run_id}"
    expected = re.search(r"^ARG ONNXRUNTIME_GPU_VERSION=(\S+)$", (DOCKER / "Dockerfile.cuda").read_text(), re.M)
    try:
        build(
            container_engine, "Dockerfile.cuda", REPO, tag, tmp_path / "build.log",
            CUDA_IMAGE=container_engine.base_image, PYTHON_FROM="base",
            WHEELS_IMAGE=container_engine.wheels_image, PIP_NO_INDEX="1",
        )  # fmt: skip
        listing = (
            "import importlib.metadata as m; print(*sorted(d.metadata['Name'].lower() for d in m.distributions()))"
        )
        installed = container_engine("run", "--rm", "--entrypoint", "python", tag, "-c", listing).stdout.split()
        assert "onnxruntime-gpu" in installed and "onnxruntime" not in installed and "torch" not in installed
        version = "import importlib.metadata as m; print(m.version('onnxruntime-gpu'))"
        assert container_engine("run", "--rm", "--entrypoint", "python", tag, "-c", version).stdout.strip() == (
            expected.group(1)
        )
        assert inspect(container_engine, tag, "{{.Config.User}}") == "10001:10001"
    finally:
        container_engine("rmi", "--force", tag, check=False)


# --- the Kubernetes manifests, under Podman ---------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def for_podman(objects: list[dict[str, Any]], run_id: str, images: dict[str, str]) -> list[dict[str, Any]]:
    """The overlay's Deployment and ConfigMap as `podman kube play` can run them on one machine.

    What changes: the images (the ones built here); names made unique to this run (Podman's emptyDir volumes are
    named after the volume); container ports published on 127.0.0.1 (Podman publishes only hostPorts); and the
    restart policy, OnFailure rather than Always, because Podman 4.3 applies Always to init containers too and
    restarts the model copy forever. The other kinds (Services, HPA, PDB, NetworkPolicy...) have no Podman meaning.
    """
    kept = [copy.deepcopy(o) for o in objects if o["kind"] in ("ConfigMap", "Deployment")]
    for deployment in (o for o in kept if o["kind"] == "Deployment"):
        deployment["metadata"]["name"] = f"cnnserve-{run_id}"
        pod = deployment["spec"]["template"]["spec"]
        pod["restartPolicy"] = "OnFailure"
        renamed = {volume["name"]: f"{volume['name']}-{run_id}" for volume in pod["volumes"]}
        for volume in pod["volumes"]:
            volume["name"] = renamed[volume["name"]]
        for container in pod.get("initContainers", []) + pod["containers"]:
            container["image"] = images[container["image"].split(":")[0]]
            for mount in container.get("volumeMounts", []):
                mount["name"] = renamed[mount["name"]]
            for port in container.get("ports", []):
                port.update(hostIP="127.0.0.1", hostPort=free_port())
    return kept


def test_the_cpu_overlay_runs_under_podman_kube_play(
    container_engine, render, cpu_image: str, model_image: str, run_id: str, tmp_path: Path
) -> None:
    yaml = pytest.importorskip("yaml")
    podman = container_engine.podman_command
    podman("--version")  # or a skip: Podman is optional
    loaded = {"cnnserve": f"localhost/{cpu_image}", "cnnserve-models": f"localhost/{model_image}"}
    objects = for_podman(render(REPO / "deploy" / "k8s" / "overlays" / "cpu"), run_id, loaded)
    manifest = tmp_path / "kube.yaml"
    manifest.write_text(yaml.safe_dump_all(objects))
    deployment = next(o for o in objects if o["kind"] == "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    server = next(c for c in pod["containers"] if c["name"] == "server")
    ports = {port["name"]: f"127.0.0.1:{port['hostPort']}" for port in server["ports"]}
    volumes = [volume["name"] for volume in pod["volumes"]]
    saved = subprocess.Popen([container_engine.docker, "save", cpu_image, model_image], stdout=subprocess.PIPE)
    try:
        podman("load", stdin=saved.stdout, timeout=300)
        assert saved.wait(timeout=60) == 0, "docker save failed"
        podman("kube", "play", str(manifest), timeout=120)
        container = ServerContainer(f"{deployment['metadata']['name']}-pod-0-server", ports["grpc"], "")
        deadline = time.monotonic() + READY_TIMEOUT
        while (status := health_or_error(container)) != "SERVING":
            assert time.monotonic() < deadline, (
                f"not SERVING after {READY_TIMEOUT}s: {status}\n"
                + podman("logs", container.name, check=False).stderr[-4000:]
            )
            time.sleep(0.5)
        (tmp_path / "x.png").write_bytes(png_bytes(render_x()))
        assert classify(container, "xo", tmp_path) == {"x.png": "X"}
        with urllib.request.urlopen(f"http://{ports['metrics']}/metrics", timeout=10) as answer:
            assert b"cnnserve_model_ready" in answer.read()
    finally:
        saved.kill()
        saved.wait()
        podman("kube", "down", str(manifest), check=False)
        podman("volume", "rm", "--force", *volumes, check=False)
        podman("rmi", "--force", *loaded.values(), check=False)
