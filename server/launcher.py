"""Start `cnnserve serve` as a child process, exactly as deployed, for the tests, the benchmark and the soak.

Everything that needs a real server (the test suite, `cnnserve bench`, the Locust run, the soak test) starts
it here, so that each of them exercises the command operators run rather than an in-process shortcut, and none
of them borrows another's tooling to do it. The contract:

- the command is `python -m cnnserve [global flags] serve --model-repository R --host 127.0.0.1
  --grpc-port 0 --metrics-port 0 --port-file F [flags]`: the kernel picks free ports, on loopback unless the
  caller leaves the host to the server's own settings;
- `running_server` waits until the server writes F, which it does once every model is loaded (in one rename,
  so F is never read half-written), and yields a `ServerProcess` with the ports F names;
- if the server exits before that, or is not ready within `ready_timeout` seconds, it is killed and
  `ServerStartError` is raised with the end of its log;
- on leaving, the server is stopped with SIGTERM (it drains and exits) and killed if it has not exited within
  `stop_timeout` seconds.

The server's stdout and stderr go to one log file, unbuffered. Only the standard library is imported here: the
benchmark and load tests load this beside their load generators, and the test suite before anything heavy.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

LOOPBACK = "127.0.0.1"
READY_TIMEOUT_SECONDS = 120.0
STOP_TIMEOUT_SECONDS = 30.0
_POLL_SECONDS = 0.05


class ServerStartError(RuntimeError):
    """The server exited, or was not ready in time, before it wrote its port file; the message ends with its log."""


@dataclass(frozen=True)
class ServerProcess:
    """A running `cnnserve serve`: its process, the loopback ports it listens on and the file its output goes to."""

    process: subprocess.Popen[bytes]
    grpc_port: int
    metrics_port: int
    log_path: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def target(self) -> str:
        return f"{LOOPBACK}:{self.grpc_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{LOOPBACK}:{self.metrics_port}/metrics"

    def log(self) -> str:
        """Everything the server has written so far."""
        return self.log_path.read_text(errors="replace")

    def log_tail(self, lines: int = 30) -> str:
        return _tail(self.log_path, lines)

    def stop(self, timeout: float = STOP_TIMEOUT_SECONDS) -> int:
        """SIGTERM, then wait up to `timeout` seconds, then kill; the exit code (negative: the killing signal)."""
        return _stop(self.process, timeout)


def serve_command(
    repository: Path,
    *flags: str,
    port_file: Path,
    host: str | None = LOOPBACK,
    global_flags: Sequence[str] = (),
) -> list[str]:
    """The `cnnserve serve` command line for `repository` on free ports, writing its ports to `port_file`.

    `host` None leaves the address to the server's settings; `global_flags` go before `serve` (`--log-level`).
    """
    command = [sys.executable, "-m", "cnnserve", *global_flags, "serve", "--model-repository", str(repository)]
    if host is not None:
        command += ["--host", host]
    command += ["--grpc-port", "0", "--metrics-port", "0", "--port-file", str(port_file)]
    return [*command, *flags]


@contextmanager
def running_server(
    repository: Path,
    *flags: str,
    log_path: Path,
    host: str | None = LOOPBACK,
    global_flags: Sequence[str] = (),
    environment: Mapping[str, str] | None = None,
    ready_timeout: float = READY_TIMEOUT_SECONDS,
    stop_timeout: float = STOP_TIMEOUT_SECONDS,
) -> Iterator[ServerProcess]:
    """Start a server, wait until every model is loaded, yield it, and stop it (see the module docstring).

    `environment` is the server's whole environment (this process's own when None). Raises ServerStartError.
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    child_environment = {**(os.environ if environment is None else environment), "PYTHONUNBUFFERED": "1"}
    with tempfile.TemporaryDirectory(prefix="cnnserve-serve-") as scratch:
        port_file = Path(scratch) / "ports.json"
        command = serve_command(repository, *flags, port_file=port_file, host=host, global_flags=global_flags)
        with log_path.open("wb") as log:
            process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=child_environment)
        try:
            ports = _wait_for_ports(process, port_file, log_path, ready_timeout)
        except BaseException:
            process.kill()
            process.wait()
            raise
        try:
            yield ServerProcess(process, ports["grpc_port"], ports["metrics_port"], log_path)
        finally:
            _stop(process, stop_timeout)


def write_port_file(path: Path, ports: Mapping[str, object]) -> None:
    """Write `ports` as JSON to `path` atomically (a reader never sees half a file): the server's side of the
    port-file contract above, used by the server, a multi-process server's supervisor and its engine."""
    staging = path.with_name(f".{path.name}.tmp")
    staging.write_text(json.dumps(ports))
    staging.replace(path)


def _wait_for_ports(process: subprocess.Popen[bytes], port_file: Path, log_path: Path, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    while not port_file.exists():
        if process.poll() is not None:
            raise ServerStartError(f"the server exited with {process.returncode}; its log:\n{_tail(log_path)}")
        if time.monotonic() > deadline:
            raise ServerStartError(f"the server was not ready after {timeout:g}s; its log:\n{_tail(log_path)}")
        time.sleep(_POLL_SECONDS)
    return json.loads(port_file.read_text())


def _stop(process: subprocess.Popen[bytes], timeout: float) -> int:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    try:
        return process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        return process.wait()


def _tail(log_path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(log_path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"
