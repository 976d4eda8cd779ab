"""A bare grpc.aio server that answers ModelInfer with a fixed response: the protocol's ceiling on this machine.

It decodes each request and encodes one prebuilt response, and does nothing else, so what it sustains under
h2load is the most a Python grpc.aio server can do here; cnnserve's figure beside it says what its own work
costs. It also answers ModelStatistics with the number of calls answered, so load_tests.bench.h2load counts
its successes as it counts cnnserve's.

    python -m load_tests.bench.bare_grpc --port-file F [--port 0]

Once it listens it writes {"grpc_port": N} to F (in one rename); SIGTERM or SIGINT stops it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
from pathlib import Path
from typing import Any

import grpc

from cnnserve.inference import grpc_service_pb2 as inference
from cnnserve.inference import grpc_service_pb2_grpc as inference_grpc

_RESPONSE = inference.ModelInferResponse(
    model_name="bare",
    outputs=[inference.ModelInferResponse.InferOutputTensor(name="logits", datatype="FP32", shape=[1, 10])],
    raw_output_contents=[bytes(40)],
)


class _FixedInference(inference_grpc.GRPCInferenceServiceServicer):
    def __init__(self) -> None:
        self.answered = 0

    async def ModelInfer(self, request: Any, context: Any) -> Any:
        self.answered += 1
        return _RESPONSE

    async def ModelStatistics(self, request: Any, context: Any) -> Any:
        stats = inference.ModelStatistics(name=request.name or "bare", version="1", inference_count=self.answered)
        stats.inference_stats.success.count = self.answered
        return inference.ModelStatisticsResponse(model_stats=[stats])


async def serve(port: int, port_file: Path | None) -> None:
    """Listen on loopback `port` (0: any free one) until SIGTERM or SIGINT; write the port to `port_file`."""
    server = grpc.aio.server()
    inference_grpc.add_GRPCInferenceServiceServicer_to_server(_FixedInference(), server)
    bound = server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    if port_file is not None:
        partial = port_file.with_name(port_file.name + ".partial")
        partial.write_text(json.dumps({"grpc_port": bound}))
        os.replace(partial, port_file)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    await server.stop(1.0)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m load_tests.bench.bare_grpc", description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, default=0, help="loopback port (default: a free one)")
    parser.add_argument("--port-file", type=Path, help='write {"grpc_port": N} here once listening')
    args = parser.parse_args(argv)
    asyncio.run(serve(args.port, args.port_file))


if __name__ == "__main__":
    main()
