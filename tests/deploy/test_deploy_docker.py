"""The container images, as far as they can be checked without building them: hadolint, the shape of
each Dockerfile (multi-stage, non-root, health check, no torch, one ONNX Runtime), the build context that
.dockerignore leaves, the CPU image's dependency list against pyproject, and the health check script run
against a real gRPC health server on loopback."""

from __future__ import annotations

import fnmatch
import os
import re
import socket
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DOCKER = REPO / "deploy" / "docker"
SERVER_IMAGES = ("Dockerfile.cpu", "Dockerfile.cuda")
ALL_IMAGES = (*SERVER_IMAGES, "Dockerfile.models")


# --- helpers -------------------------------------------------------------------------------------------


def instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    joined, pending = [], ""
    for line in dockerfile.read_text().splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        joined.append(pending + stripped)
        pending = ""
    return [(text.split(None, 1)[0].upper(), text.split(None, 1)[1]) for text in joined]


def final_stage(dockerfile: Path) -> list[tuple[str, str]]:
    steps = instructions(dockerfile)
    last_from = max(i for i, (op, _) in enumerate(steps) if op == "FROM")
    return steps[last_from:]


def dockerignore_patterns() -> list[str]:
    lines = (REPO / ".dockerignore").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]


def _pattern_matches(path: str, pattern: str) -> bool:
    """Docker's rule: a pattern excludes a path when it matches the path or one of its parent folders."""
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    pattern = pattern.strip("/")
    if pattern.startswith("**/"):
        rest = pattern[3:]
        return any(fnmatch.fnmatchcase(p, rest) for p in parts) or any(
            fnmatch.fnmatchcase("/".join(parts[i : j + 1]), rest)
            for i in range(len(parts))
            for j in range(i, len(parts))
        )
    return any(fnmatch.fnmatchcase(prefix, pattern) and "/" not in prefix[len(pattern) :] for prefix in prefixes)


def ignored(path: str) -> bool:
    """Whether .dockerignore keeps `path` (relative to the repository root) out of the build context."""
    result = False
    for pattern in dockerignore_patterns():
        negated = pattern.startswith("!")
        if _pattern_matches(path, pattern.lstrip("!")):
            result = not negated
    return result


def copy_sources(dockerfile: Path) -> Iterator[str]:
    """Build-context paths that COPY reads (COPY --from reads another stage and is skipped)."""
    for op, args in instructions(dockerfile):
        if op != "COPY" or "--from=" in args:
            continue
        words = [w for w in args.split() if not w.startswith("--")]
        yield from words[:-1]


def requirement(spec: str) -> str:
    """'name >= 1.0 ; marker' -> 'name>=1.0', names normalised as pip does."""
    spec = spec.split(";", 1)[0].replace(" ", "")
    name, version = re.match(r"([A-Za-z0-9._-]+)(.*)", spec).groups()
    return re.sub(r"[-_.]+", "-", name).lower() + version


# --- hadolint ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ALL_IMAGES)
def test_hadolint_passes(tool, name: str) -> None:
    hadolint = tool("hadolint")
    result = subprocess.run(
        [hadolint, "--no-color", str(DOCKER / name)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_catches_a_bad_dockerfile(tool, tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python\nRUN apt-get update && apt-get install curl\n")
    result = subprocess.run(
        [tool("hadolint"), "--no-color", str(bad)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode != 0
    assert "DL3006" in result.stdout


# --- image shape ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", SERVER_IMAGES)
def test_server_image_is_multi_stage_non_root_and_checked(name: str) -> None:
    dockerfile = DOCKER / name
    assert sum(op == "FROM" for op, _ in instructions(dockerfile)) >= 2, "not multi-stage"
    final = final_stage(dockerfile)
    users = [args for op, args in final if op == "USER"]
    assert users, "final stage runs as root"
    uid = users[-1].split(":")[0]
    assert uid.isdigit() and int(uid) != 0, "USER must be a numeric non-root uid (runAsNonRoot checks it)"
    healthchecks = [args for op, args in final if op == "HEALTHCHECK"]
    assert len(healthchecks) == 1 and "healthcheck.py" in healthchecks[0]
    assert re.search(r"--start-period=\d+s", healthchecks[0]), "no start period for model loading"
    exposed = {port for op, args in final if op == "EXPOSE" for port in args.split()}
    assert exposed == {"8001", "8002"}
    env = " ".join(args for op, args in final if op == "ENV")
    assert "CNNSERVE_HOST=0.0.0.0" in env, "the default host 127.0.0.1 is unreachable from outside"
    assert [args for op, args in final if op == "ENTRYPOINT"] == ['["cnnserve"]']


@pytest.mark.parametrize("name", SERVER_IMAGES)
def test_server_image_has_no_torch(name: str) -> None:
    text = " ".join(args for op, args in instructions(DOCKER / name) if op != "RUN" or "find_spec" not in args)
    assert "torch" not in text
    assert "[train" not in text and ".[" not in text, "no extras: the train extra brings torch"


def test_cpu_image_uses_the_cpu_runtime_only() -> None:
    text = " ".join(args for _, args in instructions(DOCKER / "Dockerfile.cpu"))
    assert "onnxruntime-gpu" not in text
    assert "--no-deps ." in text, "a plain `pip install .` would pull onnxruntime-gpu on Linux x86_64"
    lines = (DOCKER / "requirements-cpu.txt").read_text().splitlines()
    names = {re.split(r"[<>=!~]", requirement(line))[0] for line in lines if line.strip() and not line.startswith("#")}
    assert "onnxruntime" in names and "onnxruntime-gpu" not in names


def test_cuda_image_has_cuda_cudnn_and_onnxruntime_gpu() -> None:
    steps = instructions(DOCKER / "Dockerfile.cuda")
    args = {a.split("=", 1)[0]: a.split("=", 1)[1] for op, a in steps if op == "ARG" and "=" in a}
    assert re.fullmatch(r"nvidia/cuda:\d+\.\d+\.\d+-cudnn-runtime-ubuntu\d+\.\d+", args["CUDA_IMAGE"])
    assert re.fullmatch(r"\d+\.\d+\.\d+", args["ONNXRUNTIME_GPU_VERSION"]), "pin it: it fixes the CUDA major"
    installs = " ".join(a for op, a in steps if op == "RUN" and "install" in a)
    assert "onnxruntime-gpu==" in installs
    assert not re.search(r"\bonnxruntime(?!-gpu)[=<>~]", installs), "two ONNX Runtimes in one image"


def test_cpu_requirements_match_pyproject() -> None:
    """The CPU image installs pyproject's runtime dependencies, with onnxruntime for onnxruntime-gpu."""
    dependencies = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    expected = {requirement(d).replace("onnxruntime-gpu", "onnxruntime") for d in dependencies}
    lines = (DOCKER / "requirements-cpu.txt").read_text().splitlines()
    listed = {requirement(line) for line in lines if line.strip() and not line.startswith("#")}
    assert listed == expected


def test_model_image_holds_only_models() -> None:
    final = final_stage(DOCKER / "Dockerfile.models")
    users = [args for op, args in final if op == "USER"]
    assert users and users[-1].split(":")[0] not in ("0", "root")
    assert [args.split()[-1] for op, args in final if op == "COPY"] == ["/models"]


# --- build context -------------------------------------------------------------------------------------


def test_dockerignore_keeps_heavy_and_private_files_out() -> None:
    for path in (".git/HEAD", ".venv/bin/python", "models/mnist_net/1/model.onnx", "x.onnx", "runs/a.pt"):
        assert ignored(path), path
    assert ignored("server/__pycache__/x.cpython-311.pyc")
    assert ignored("tests/deploy/test_deploy_docker.py")


@pytest.mark.parametrize("name", SERVER_IMAGES)
def test_every_copied_file_is_in_the_build_context(name: str) -> None:
    for source in copy_sources(DOCKER / name):
        path = REPO / source
        if source == "README.md" and not path.exists():
            pytest.fail("pyproject's readme README.md is missing: `pip install .` and COPY need it")
        assert path.exists(), f"COPY {source}: no such file"
        files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
        kept = [f for f in files if not ignored(f.relative_to(REPO).as_posix())]
        assert kept, f"COPY {source}: everything is excluded by .dockerignore"
        if path.is_file():
            assert kept == [path]


def test_dockerignore_matcher_follows_docker_rules() -> None:
    assert _pattern_matches("deploy/docker/x", "deploy")
    assert not _pattern_matches("deployment/x", "deploy")
    assert _pattern_matches("a/b/__pycache__/c.pyc", "**/__pycache__")
    assert not ignored("deploy/docker/healthcheck.py")
    assert ignored("deploy/docker/Dockerfile.cpu")


# --- the health check script ---------------------------------------------------------------------------


@pytest.fixture
def health_server():
    grpc = pytest.importorskip("grpc")
    health = pytest.importorskip("grpc_health.v1.health")
    from concurrent import futures

    from grpc_health.v1 import health_pb2_grpc

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield port, servicer
    server.stop(None)


def _healthcheck(port: int) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CNNSERVE_GRPC_PORT": str(port), "CNNSERVE_HEALTH_TIMEOUT_SECONDS": "2"}
    env.pop("CNNSERVE_HEALTH_SERVICE", None)
    return subprocess.run(
        [sys.executable, str(DOCKER / "healthcheck.py")],
        env=env,
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
    )


def test_healthcheck_follows_the_overall_serving_status(health_server) -> None:
    from grpc_health.v1 import health_pb2

    port, servicer = health_server
    servicer.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
    result = _healthcheck(port)
    assert result.returncode == 1 and "NOT_SERVING" in result.stderr
    servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    assert _healthcheck(port).returncode == 0


def test_healthcheck_fails_without_a_server() -> None:
    pytest.importorskip("grpc_health.v1.health")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        free_port = probe.getsockname()[1]
    result = _healthcheck(free_port)
    assert result.returncode == 1 and "UNAVAILABLE" in result.stderr
