"""A bare grpc.aio server that answers ModelInfer with a fixed response: the protocol's ceiling on this machine.

It decodes each request and encodes one prebuilt response, and does nothing else, so what it sustains under
h2load is the most a Python grpc.aio server can do here (its service is added as cnnserve adds its own, as a
generic handler only, but without request ids: server/api/registration.py); cnnserve's figure beside it says
what its own work costs. It also answers ModelStatistics with the number of calls it answered, so
load_tests.bench.h2load counts its successes as it counts cnnserve's.

    python -m load_tests.bench.bare_grpc --port-file F [--port 0] [--processes 1] [--await-answer]

With `--await-answer` the handler does not return the answer at once: it awaits a future that the event loop
sets on its next turn, as a server whose answer is computed elsewhere must (load_tests.bench.await_floor
compares the two).

With `--processes N` (N > 1) it starts N such servers as child processes sharing one loopback port
(SO_REUSEPORT: the kernel hands each new connection to one of them), the ceiling for N processes. Each one
counts only the calls it answered, so each also listens on a loopback port of its own, its stats port, where
ModelStatistics reaches that process and no other: the calls answered are the sum over the stats ports.

Once every process listens it writes {"grpc_port": P, "stats_ports": [S, ...]} (one stats port per process) to F,
in one rename. SIGTERM or SIGINT stops it (and its children); with N > 1 it also stops, exiting 1, when a child
exits on its own.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import grpc

from cnnserve.inference import grpc_service_pb2 as inference
from cnnserve.inference import grpc_service_pb2_grpc as inference_grpc
from cnnserve.server.api.registration import add_service

SCRIPT = Path(__file__).resolve()
"""Its workers start as this file, as h2load_compare starts the server: that needs only installed packages."""


LOOPBACK = "127.0.0.1"
_READY_TIMEOUT_SECONDS = 30.0
_POLL_SECONDS = 0.05
_RESPONSE = inference.ModelInferResponse(
    model_name="bare",
    outputs=[inference.ModelInferResponse.InferOutputTensor(name="logits", datatype="FP32", shape=[1, 10])],
    raw_output_contents=[bytes(40)],
)


class _FixedInference(inference_grpc.GRPCInferenceServiceServicer):
    def __init__(self, await_answer: bool = False) -> None:
        self.answered = 0
        self.await_answer = await_answer

    async def ModelInfer(self, request: Any, context: Any) -> Any:
        self.answered += 1
        if not self.await_answer:
            return _RESPONSE
        # As a server that has the answer computed elsewhere: the handler waits for a future that is set on the
        # loop's next turn (the least such a wait can cost: no socket, no other process).
        loop = asyncio.get_running_loop()
        answer = loop.create_future()
        loop.call_soon(answer.set_result, _RESPONSE)
        return await answer

    async def ModelStatistics(self, request: Any, context: Any) -> Any:
        stats = inference.ModelStatistics(name=request.name or "bare", version="1", inference_count=self.answered)
        stats.inference_stats.success.count = self.answered
        return inference.ModelStatisticsResponse(model_stats=[stats])


def _write_atomically(path: Path, figures: dict) -> None:
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(figures))
    os.replace(partial, path)


async def serve(port: int, port_file: Path | None, await_answer: bool = False) -> None:
    """Listen on loopback `port` (0: any free one; shareable with SO_REUSEPORT) and on a stats port of its own
    until SIGTERM or SIGINT; write {"grpc_port": P, "stats_ports": [S]} to `port_file` once listening."""
    server = grpc.aio.server(options=[("grpc.so_reuseport", 1)])
    servicer = _FixedInference(await_answer)
    add_service(server, inference_grpc.add_GRPCInferenceServiceServicer_to_server, servicer, request_ids=False)
    bound = server.add_insecure_port(f"{LOOPBACK}:{port}")
    stats_port = server.add_insecure_port(f"{LOOPBACK}:0")
    await server.start()
    if port_file is not None:
        _write_atomically(port_file, {"grpc_port": bound, "stats_ports": [stats_port]})
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    await server.stop(1.0)


def serve_processes(processes: int, port: int, port_file: Path | None, await_answer: bool = False) -> int:
    """Run `processes` servers (child processes running `serve`) on one shared loopback port until SIGTERM or
    SIGINT, or until one of them exits; returns 0 after a signal, 1 when a child exited or did not start.

    The first child binds `port` (0: a free one) and the others bind the port it got, so all share it.
    """
    stop = False

    def request_stop(signum: int, frame: Any) -> None:
        nonlocal stop
        stop = True

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, request_stop)
    children: list[subprocess.Popen[bytes]] = []
    with tempfile.TemporaryDirectory(prefix="cnnserve-bare-workers-") as scratch:
        try:
            shared_port, stats_ports = port, []
            for index in range(processes):
                child_file = Path(scratch) / f"ports-{index}.json"
                command = [sys.executable, str(SCRIPT), "--port", str(shared_port)]
                command += ["--await-answer"] if await_answer else []
                children.append(subprocess.Popen([*command, "--port-file", str(child_file)]))
                ports = _wait_for_ports(children[-1], child_file, lambda: stop)
                if ports is None:
                    return 0 if stop else 1
                shared_port = ports["grpc_port"]
                stats_ports += ports["stats_ports"]
            if port_file is not None:
                _write_atomically(port_file, {"grpc_port": shared_port, "stats_ports": stats_ports})
            while not stop:
                if any(child.poll() is not None for child in children):
                    print("bare_grpc: a child process exited; stopping the others", file=sys.stderr)
                    return 1
                time.sleep(_POLL_SECONDS)
            return 0
        finally:
            _stop_all(children)


def _wait_for_ports(child: subprocess.Popen[bytes], port_file: Path, stopping: Any) -> dict | None:
    """The ports `child` wrote to `port_file`, or None when it exited, timed out, or a stop was requested."""
    deadline = time.monotonic() + _READY_TIMEOUT_SECONDS
    while not port_file.exists():
        if child.poll() is not None or stopping() or time.monotonic() > deadline:
            return None
        time.sleep(_POLL_SECONDS)
    return json.loads(port_file.read_text())


def _stop_all(children: list[subprocess.Popen[bytes]]) -> None:
    for child in children:
        if child.poll() is None:
            child.terminate()
    for child in children:
        try:
            child.wait(10)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m load_tests.bench.bare_grpc", description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, default=0, help="loopback port (default: a free one)")
    parser.add_argument("--port-file", type=Path, help="write the ports, as JSON, here once listening")
    parser.add_argument("--processes", type=int, default=1, help="server processes sharing the port (default 1)")
    parser.add_argument(
        "--await-answer",
        action="store_true",
        help="the handler awaits its answer, set on the event loop's next turn, instead of returning it",
    )
    args = parser.parse_args(argv)
    if args.processes < 1:
        parser.error(f"--processes must be at least 1, not {args.processes}")
    if args.processes == 1:
        asyncio.run(serve(args.port, args.port_file, args.await_answer))
        return 0
    return serve_processes(args.processes, args.port, args.port_file, args.await_answer)


if __name__ == "__main__":
    sys.exit(main())
