"""Real cnnserve server processes on loopback, for tests: `cnnserve serve` in a subprocess on free ports."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc

from cnnserve.bench.server import serve_command as bench_serve_command


@dataclass
class ServerProcess:
    process: subprocess.Popen[str]
    grpc_port: int
    metrics_port: int
    log_path: Path

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    def log(self) -> str:
        return self.log_path.read_text()

    def terminate(self, timeout: float = 30) -> int:
        """SIGTERM, then wait for the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            raise


def serve_command(repository: Path, *flags: str, port_file: Path) -> list[str]:
    """`cnnserve serve` on free loopback ports, writing its ports to `port_file` once ready."""
    return bench_serve_command(repository, flags, port_file)


@contextmanager
def running_server(
    repository: Path, *flags: str, workdir: Path, env: dict[str, str] | None = None, ready_timeout: float = 60
) -> Iterator[ServerProcess]:
    """Start a server, wait until it wrote its ports (every model loaded), yield it, and stop it with SIGTERM."""
    workdir.mkdir(parents=True, exist_ok=True)
    port_file = workdir / "ports.json"
    port_file.unlink(missing_ok=True)
    log_path = workdir / "server.log"
    with log_path.open("w") as log:
        process = subprocess.Popen(
            serve_command(repository, *flags, port_file=port_file),
            stdout=log,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, **(env or {})},
        )
    deadline = time.monotonic() + ready_timeout
    while not port_file.exists():
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}:\n{log_path.read_text()}")
        if time.monotonic() > deadline:
            process.kill()
            raise RuntimeError(f"server not ready after {ready_timeout}s:\n{log_path.read_text()}")
        time.sleep(0.05)
    ports = json.loads(port_file.read_text())
    server = ServerProcess(process, ports["grpc_port"], ports["metrics_port"], log_path)
    try:
        yield server
    finally:
        if process.poll() is None:
            server.terminate()


@contextmanager
def channel_to(server: ServerProcess) -> Iterator[grpc.Channel]:
    channel = grpc.insecure_channel(server.target)
    try:
        grpc.channel_ready_future(channel).result(timeout=10)
        yield channel
    finally:
        channel.close()
