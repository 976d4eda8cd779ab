"""`cnnserve serve --frontends N`: one engine process, N gRPC front-end processes on one port, and this supervisor.

Why processes: a Python gRPC server does its protocol work (HTTP/2, protobuf, decoding, preprocessing) on one
event-loop thread, so one process never uses more than a core for it. The front-ends (server/app.py's `Server`
with a `RemoteRepository`) share the port through SO_REUSEPORT, so the kernel spreads connections over them;
the engine (server/engine.py) holds each model once and batches the requests of all front-ends together.
docs/architecture.md draws the processes and what crosses between them.

The supervisor:
- makes a run folder (the engine's socket, and prometheus_client's multiprocess files, so /metrics sums every
  process) and reserves the gRPC port (a bound SO_REUSEPORT socket that never listens, so port 0 works and the
  port stays ours across front-end restarts);
- starts the engine and the front-ends, and writes the port file once the engine has loaded the models and every
  front-end listens;
- restarts a front-end that dies (its own in-flight calls fail; the others never notice) or exits (one that
  cannot take in the engine's catalog drains and exits 1: server/engine_client.py, `on_broken`), up to
  `_RESTARTS_PER_MINUTE` a minute, after which it shuts the server down and exits 1; it counts each restart in
  `cnnserve_frontend_restarts_total`, which /metrics sums with every process's;
- when the engine dies, tells every front-end at once (SIGUSR1: each fails its waiting calls UNAVAILABLE and turns
  NOT_SERVING), stops them, and exits 1 so the orchestrator restarts the whole server: a fresh engine must load
  and warm every model anyway, and a pod restart does that with its probes watching;
- on SIGTERM or SIGINT, passes SIGTERM to every process: the front-ends drain as a single-process server does
  (nothing accepted is lost), the engine serves them until they are gone, then everyone exits and so does this
  process, with 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import logging
import multiprocessing
import os
import re
import shutil
import signal
import socket
import tempfile
import time
from collections.abc import Mapping
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import TYPE_CHECKING

from cnnserve.server.launcher import write_port_file
from cnnserve.server.settings import ExecutionProvider, ServerSettings

if TYPE_CHECKING:
    from prometheus_client import Counter

_log = logging.getLogger(__name__)
_RESTARTS_PER_MINUTE = 5
_KILL_MARGIN_SECONDS = 10.0
"""After the drain timeout, how long the supervisor waits for a process to exit before it kills it."""


def reserve_port(host: str, port: int) -> socket.socket:
    """A socket bound to `host:port` with SO_REUSEPORT that never listens: the front-ends bind the same port."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    reserved = socket.socket(family, socket.SOCK_STREAM)
    reserved.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    reserved.bind((host, port))
    return reserved


def usable_cpus(cgroup: Path = Path("/sys/fs/cgroup")) -> int:
    """The cores this process may use: its CPU affinity (the core count where the system keeps none, as macOS),
    capped by the container's CPU quota (`cpu_quota`)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    quota = cpu_quota(cgroup)
    return cores if quota is None else min(cores, quota)


def cpu_quota(cgroup: Path = Path("/sys/fs/cgroup")) -> int | None:
    """The whole CPUs this container's quota allows (a fraction rounds up), or None where it sets none: cgroup
    v2's cpu.max, else cgroup v1's cpu/cpu.cfs_quota_us over cpu.cfs_period_us (nodes that still run v1, where
    a Kubernetes CPU limit lands)."""
    with contextlib.suppress(OSError, ValueError):
        quota, period = (cgroup / "cpu.max").read_text().split()
        return None if quota == "max" else max(1, -(-int(quota) // int(period)))
    with contextlib.suppress(OSError, ValueError):
        quota_us = int((cgroup / "cpu" / "cpu.cfs_quota_us").read_text())
        period_us = int((cgroup / "cpu" / "cpu.cfs_period_us").read_text())
        return None if quota_us <= 0 else max(1, -(-quota_us // period_us))
    return None


AUTO_FRONTENDS_MIN_CORES = 8
"""The fewest usable cores at which `--frontends auto` splits the server (see `auto_frontends`)."""


def auto_frontends(settings: ServerSettings, cores: int, gpu: bool) -> int:
    """The front-end count of `--frontends auto`: half the usable cores (the other half left to the engine's loop
    and ONNX Runtime's threads) where the models run on an NVIDIA GPU and there are at least
    AUTO_FRONTENDS_MIN_CORES cores; else 0, one process. `cores`: `usable_cpus()`; `gpu`: `nvidia_gpu_usable()`.

    Why these numbers, measured on a 16-vCPU H100 host (docs/gpu.md, five workloads): 8 front-ends answered
    1.4x-4.2x the calls of one process in every one, because there the GPU computes and one process's event loop
    is the bound; 4 front-ends 1.6x-2.4x in four and 0.92x in one; 2 front-ends as little as 0.47x in one. On a
    CPU-only host the inference threads need the same cores as the front-ends, so the split pays or costs by
    how much the model computes per call (on 2 cores, a compute-bound model lost a third of its throughput to it,
    a light one gained up to 1.5x: docs/benchmarks.md); one process stays the default there, and `--frontends N`
    is the operator's choice.
    """
    if settings.execution_provider is ExecutionProvider.CPU:
        return 0
    return cores // 2 if gpu and cores >= AUTO_FRONTENDS_MIN_CORES else 0


def nvidia_gpu_usable() -> bool:
    """Whether models here can run on an NVIDIA GPU: ONNX Runtime has its CUDA provider and a GPU is visible."""
    return cuda_provider_installed() and nvidia_gpu_visible()


def cuda_provider_installed() -> bool:
    """Whether the installed ONNX Runtime has its CUDA provider (onnxruntime-gpu), found without importing it."""
    spec = importlib.util.find_spec("onnxruntime")
    if spec is None or spec.origin is None:
        return False
    return (Path(spec.origin).parent / "capi" / "libonnxruntime_providers_cuda.so").is_file()


def nvidia_gpu_visible(devices: Path = Path("/dev"), environ: Mapping[str, str] = os.environ) -> bool:
    """Whether this process can see an NVIDIA GPU: a /dev/nvidiaN device (what the NVIDIA container runtime
    mounts), unless CUDA_VISIBLE_DEVICES hides every device."""
    if environ.get("CUDA_VISIBLE_DEVICES", "0").strip() in ("", "-1", "none", "NoDevFiles"):
        return False
    with contextlib.suppress(OSError):
        return any(re.fullmatch(r"nvidia\d+", device.name) for device in devices.iterdir())
    return False


def engine_settings(settings: ServerSettings, frontends: int, port_file: Path) -> ServerSettings:
    """The engine's settings: ONNX Runtime's threads sized to the cores the front-ends leave, unless set (0 is
    ONNX Runtime's own default, one per core).

    Front-ends are busy whenever requests are, so inference threads that assume every core would preempt them
    (and each other) exactly under load.
    """
    update: dict[str, object] = {"port_file": port_file, "frontends": frontends}
    if settings.intra_op_threads == 0:
        update["intra_op_threads"] = max(1, usable_cpus() - frontends)
    return settings.model_copy(update=update)


class Supervisor:
    """Starts the engine and the front-ends of one server and watches them (see the module docstring)."""

    def __init__(self, settings: ServerSettings, frontends: int, log_level: str) -> None:
        self.settings = settings
        self.frontends = frontends
        self._log_level = log_level
        self._run_dir = Path(tempfile.mkdtemp(prefix="cnnserve-"))
        self._metrics_dir = self._run_dir / "metrics"
        self._metrics_dir.mkdir()
        self._context = multiprocessing.get_context("spawn")
        self._engine: BaseProcess | None = None
        self._frontend_processes: dict[int, BaseProcess] = {}
        self._restarts: list[float] = []
        self._restart_count: Counter | None = None
        self._port = 0

    async def run(self, stop_requested: asyncio.Event) -> int:
        """Start everything, supervise until a stop is requested or the engine dies; the exit code."""
        # prometheus_client reads this when a process first imports it: set before any child starts, and before
        # this process imports it (for the restart count below).
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(self._metrics_dir)
        from cnnserve.server.metrics import frontend_restarts

        self._restart_count = frontend_restarts(registry=None)
        reserved = reserve_port(self.settings.host, self.settings.grpc_port)
        self._port = reserved.getsockname()[1]
        try:
            self._engine = self._start_engine()
            for index in range(self.frontends):
                self._frontend_processes[index] = self._start_frontend(index)
            code = await self._supervise(stop_requested)
        finally:
            reserved.close()
            shutil.rmtree(self._run_dir, ignore_errors=True)
        return code

    def _start_engine(self) -> BaseProcess:
        from cnnserve.server.engine import run_engine

        settings = engine_settings(self.settings, self.frontends, self._run_dir / "engine.json")
        _log.info("supervisor: ONNX Runtime uses %d thread(s) per session by default", settings.intra_op_threads)
        process = self._context.Process(
            target=run_engine,
            args=(settings, self._run_dir, self._metrics_dir, self._log_level),
            name="cnnserve-engine",
        )
        process.start()
        _log.info("supervisor: engine started (pid %d)", process.pid)
        return process

    def _start_frontend(self, index: int) -> BaseProcess:
        from cnnserve.server.frontend import run_frontend

        port_file = self._run_dir / f"frontend-{index}.json"
        port_file.unlink(missing_ok=True)
        settings = self.settings.model_copy(update={"grpc_port": self._port, "port_file": port_file})
        process = self._context.Process(
            target=run_frontend,
            args=(settings, self._run_dir, index, self._log_level),
            name=f"cnnserve-frontend-{index}",
        )
        process.start()
        _log.info("supervisor: front-end %d started (pid %d)", index, process.pid)
        return process

    async def _supervise(self, stop_requested: asyncio.Event) -> int:
        ready_written = False
        while True:
            if stop_requested.is_set():
                return await self._stop()
            assert self._engine is not None
            if not self._engine.is_alive():
                return await self._engine_died()
            for index, process in list(self._frontend_processes.items()):
                if not process.is_alive():
                    if not self._restart_allowed():
                        _log.error("supervisor: front-ends keep dying; shutting the server down")
                        await self._stop()
                        return 1
                    _log.error(
                        "supervisor: front-end %d (pid %s) exited with %s; restarting it",
                        index,
                        process.pid,
                        process.exitcode,
                    )
                    _mark_dead(process, self._metrics_dir)
                    self._frontend_processes[index] = self._start_frontend(index)
                    assert self._restart_count is not None
                    self._restart_count.inc()
            if not ready_written and self._all_listening():
                ready_written = True
                self._write_port_file()
            await _wait_any(stop_requested, [self._engine, *self._frontend_processes.values()], 0.5)

    def _all_listening(self) -> bool:
        files = [self._run_dir / "engine.json"]
        files += [self._run_dir / f"frontend-{index}.json" for index in self._frontend_processes]
        return all(path.is_file() for path in files)

    def _write_port_file(self) -> None:
        engine = json.loads((self._run_dir / "engine.json").read_text())
        _log.info(
            "ready: %d front-end(s) on %s:%d, one engine; metrics on port %d",
            len(self._frontend_processes),
            self.settings.host,
            self._port,
            engine["metrics_port"],
        )
        if self.settings.port_file is not None:
            assert self._engine is not None
            ports = {"grpc_port": self._port, "metrics_port": engine["metrics_port"], "engine_pid": self._engine.pid}
            ports["frontend_pids"] = [p.pid for p in self._frontend_processes.values()]
            write_port_file(self.settings.port_file, ports)

    def _restart_allowed(self) -> bool:
        now = time.monotonic()
        self._restarts = [t for t in self._restarts if now - t < 60.0]
        self._restarts.append(now)
        return len(self._restarts) <= _RESTARTS_PER_MINUTE

    async def _engine_died(self) -> int:
        assert self._engine is not None
        code = self._engine.exitcode
        _log.error("supervisor: the engine exited with %s; front-ends answer UNAVAILABLE and the server exits", code)
        for process in self._frontend_processes.values():
            _signal(process, signal.SIGUSR1)
        await self._stop()
        return code if code in (2, 3) else 1

    async def _stop(self) -> int:
        """SIGTERM to everyone, wait for the drain, kill what is left; 0 when every process exited cleanly."""
        processes = [*self._frontend_processes.values()]
        if self._engine is not None:
            processes.append(self._engine)
        for process in processes:
            _signal(process, signal.SIGTERM)
        deadline = time.monotonic() + self.settings.drain_timeout_seconds + _KILL_MARGIN_SECONDS
        while any(p.is_alive() for p in processes) and time.monotonic() < deadline:
            await _wait_any(None, [p for p in processes if p.is_alive()], min(0.25, deadline - time.monotonic()))
        for process in processes:
            if process.is_alive():
                _log.error("supervisor: %s did not stop in time; killing it", process.name)
                process.kill()
                process.join()
        codes = [p.exitcode for p in processes]
        _log.info("supervisor: stopped (exit codes %s)", codes)
        return 0 if all(code == 0 for code in codes) else 1


def die_with_parent() -> None:
    """Have the kernel SIGTERM this process when its parent (the supervisor) dies, even by SIGKILL, so that no
    engine or front-end outlives its server."""
    import ctypes

    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)
    if os.getppid() == 1:
        os.kill(os.getpid(), signal.SIGTERM)


def _signal(process: BaseProcess, signum: int) -> None:
    if process.pid is not None and process.is_alive():
        with contextlib.suppress(ProcessLookupError):
            os.kill(process.pid, signum)


def _mark_dead(process: BaseProcess, metrics_dir: Path) -> None:
    """Drop a dead process's live gauges (its counters stay: they count what it did)."""
    from prometheus_client import multiprocess

    if process.pid is not None:
        multiprocess.mark_process_dead(process.pid, str(metrics_dir))


async def _wait_any(event: asyncio.Event | None, processes: list[BaseProcess], timeout: float) -> None:
    """Until a process exits, `event` is set, or `timeout` passes."""
    loop = asyncio.get_running_loop()
    woken = asyncio.Event()
    sentinels = [p.sentinel for p in processes]
    for sentinel in sentinels:
        loop.add_reader(sentinel, woken.set)
    waits = [asyncio.ensure_future(woken.wait())]
    if event is not None:
        waits.append(asyncio.ensure_future(event.wait()))
    try:
        await asyncio.wait(waits, timeout=max(timeout, 0.0), return_when=asyncio.FIRST_COMPLETED)
    finally:
        for sentinel in sentinels:
            loop.remove_reader(sentinel)
        for wait in waits:
            wait.cancel()


async def supervise(settings: ServerSettings, frontends: int, log_level: str = "INFO") -> int:
    """Run a multi-process server until SIGTERM or SIGINT; returns the exit code."""
    loop = asyncio.get_running_loop()
    stop_requested = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop_requested.set)
    _log.info("settings: %s", settings.model_dump_json())
    return await Supervisor(settings, frontends, log_level).run(stop_requested)
