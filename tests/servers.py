"""Real cnnserve server processes on loopback, for tests: `cnnserve serve` in a subprocess on free ports.

The launching is `cnnserve.server.launcher`'s, the same that the benchmark and the load tests use; this adds the
tests' habits: a work directory per server holding its log, environment variables added to this process's own,
a channel that is connected before the test gets it, and a way to wait for what the server's metrics say.
"""

from __future__ import annotations

import os
import re
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

import grpc

from cnnserve.server import launcher
from cnnserve.server.launcher import ServerProcess, serve_command

__all__ = [
    "ServerProcess",
    "channel_to",
    "metric",
    "queue_depth",
    "running_server",
    "serve_command",
    "wait_until",
    "with_process_hooks",
]


PROCESS_HOOKS = Path(__file__).parent / "server" / "hooks"


def with_process_hooks(**variables: str) -> dict[str, str]:
    """Environment variables (`variables`, plus PYTHONPATH) that start every process of a server with the test
    hooks of tests/server/hooks/sitecustomize.py; each hook is named there by its variable."""
    path = os.pathsep.join(filter(None, (str(PROCESS_HOOKS), os.environ.get("PYTHONPATH"))))
    return {"PYTHONPATH": path, **variables}


def running_server(
    repository: Path, *flags: str, workdir: Path, env: dict[str, str] | None = None, ready_timeout: float = 60
) -> AbstractContextManager[ServerProcess]:
    """Start a server logging to `workdir`/server.log, wait until every model is loaded, yield it, stop it."""
    return launcher.running_server(
        repository,
        *flags,
        log_path=workdir / "server.log",
        environment={**os.environ, **(env or {})},
        ready_timeout=ready_timeout,
    )


@contextmanager
def channel_to(server: ServerProcess) -> Iterator[grpc.Channel]:
    channel = grpc.insecure_channel(server.target)
    try:
        grpc.channel_ready_future(channel).result(timeout=10)
        yield channel
    finally:
        channel.close()


def metric(server: ServerProcess, name: str, **labels: str) -> float:
    """One series' value from the server's /metrics, 0 when absent (labels in alphabetical order, as
    prometheus_client writes them)."""
    with urllib.request.urlopen(server.metrics_url, timeout=5) as answer:
        text = answer.read().decode()
    selector = ",".join(f'{key}="{value}"' for key, value in sorted(labels.items()))
    found = re.search(rf"^{name}{{{selector}}} (\S+)$", text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


def queue_depth(server: ServerProcess, model: str) -> float:
    """Images queued for `model` version 1, as the server's queue-depth gauge says."""
    return metric(server, "cnnserve_queue_depth", model=model, version="1")


def wait_until(
    condition: Callable[[], object], message: str = "timed out waiting for the server", timeout: float = 20
) -> None:
    """Poll `condition` until it holds; fail with `message` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, message
        time.sleep(0.01)
