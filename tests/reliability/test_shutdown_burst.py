"""SIGTERM with a burst of calls in flight: every call is answered or refused with UNAVAILABLE, none CANCELLED.

A client fires N calls at once (on 1 or 8 channels) and the server gets SIGTERM 50 ms later, while most of the
calls have reached its transport but not yet its handlers. gRPC's own `stop` would cancel those; CANCELLED is not
retried by gRPC retry policies, so in a rolling update they would simply be lost. Each status is counted: only
OK (with the right answer), UNAVAILABLE (retryable, on another replica) and, when the queue is full,
RESOURCE_EXHAUSTED are allowed; the process exits 0 well within the drain timeout.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tritonclient.grpc import service_pb2 as ipb
from tritonclient.grpc import service_pb2_grpc as ipb_grpc

from cnnserve.v1 import classifier_pb2 as pb
from cnnserve.v1 import classifier_pb2_grpc as pb_grpc
from tests.conftest import png_bytes
from tests.servers import ServerProcess, queue_depth, running_server, wait_until

OK, UNAVAILABLE, EXHAUSTED = grpc.StatusCode.OK, grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED
DRAIN_TIMEOUT = 20.0
SIGNAL_AFTER = 0.05
OWN_CONNECTION = [("grpc.use_local_subchannel_pool", 1)]
"""Channel options for a connection per channel (channels to one target share one connection otherwise)."""


def requests_for(target: str, api: str, digit: np.ndarray) -> tuple[str, Any, Callable[[Any], bool]]:
    """The method, the request and how to check its answer, from a reference call made first."""
    with grpc.insecure_channel(target) as channel:
        if api == "classify":
            request = pb.ClassifyRequest(model="mnist_net", images=[pb.Image(encoded=png_bytes(digit))])
            label = pb_grpc.ImageClassifierStub(channel).Classify(request, timeout=10).results[0].top[0].label
            return "/cnnserve.v1.ImageClassifier/Classify", request, lambda r: r.results[0].top[0].label == label
        tensor = (digit.astype(np.float32) / 255.0)[None, None]
        request = ipb.ModelInferRequest(model_name="mnist_net", raw_input_contents=[tensor.tobytes()])
        request.inputs.add(name="input", datatype="FP32", shape=list(tensor.shape))
        answer = ipb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=10)
        expected = np.frombuffer(answer.raw_output_contents[0], np.float32)

    def correct(response: ipb.ModelInferResponse) -> bool:
        return bool(np.allclose(np.frombuffer(response.raw_output_contents[0], np.float32), expected, atol=1e-5))

    return "/inference.GRPCInferenceService/ModelInfer", request, correct


def fire(target: str, method: str, request: Any, channels: int, calls: int, queued_first: int, fired) -> list:
    """Send the calls as fast as an asyncio client can (grpc.aio), set `fired`, and return each call's outcome.

    With `queued_first`, that many calls go first, and the rest once `fired.wait_for_queue()` returns.
    """

    async def run() -> list:
        opened = [grpc.aio.insecure_channel(target, options=OWN_CONNECTION) for _ in range(channels)]
        try:
            for channel in opened:
                await channel.channel_ready()
            deserializer = (
                ipb.ModelInferResponse.FromString if "ModelInfer" in method else pb.ClassifyResponse.FromString
            )
            callables = [c.unary_unary(method, type(request).SerializeToString, deserializer) for c in opened]
            first = [callables[n % channels](request, timeout=30) for n in range(queued_first)]
            if queued_first:
                await asyncio.to_thread(fired.wait_for_queue)
            rest = [callables[n % channels](request, timeout=30) for n in range(calls - queued_first)]
            fired.set()
            outcomes = []
            for call in (*first, *rest):
                try:
                    outcomes.append((grpc.StatusCode.OK, await call))
                except grpc.aio.AioRpcError as failure:
                    outcomes.append((failure.code(), None))
            return outcomes
        finally:
            for channel in opened:
                await channel.close()

    return asyncio.run(run())


class Fired(threading.Event):
    def __init__(self, server: ServerProcess, queued: int) -> None:
        super().__init__()
        self.server, self.queued = server, queued

    def wait_for_queue(self) -> None:
        wait_until(lambda: queue_depth(self.server, "mnist_net") == self.queued)


def burst_then_sigterm(
    server: ServerProcess, api: str, channels: int, calls: int, digit: np.ndarray, queued_first: int = 0
) -> Counter:
    """Fire `calls` calls over `channels` channels, SIGTERM 50 ms later, and count how each call ended.

    With `queued_first`, that many calls are sent first, and the burst starts once the server's queue-depth gauge
    shows them all queued. A Health.Watch stream stays open throughout.
    """
    method, request, correct = requests_for(server.target, api, digit)
    with grpc.insecure_channel(server.target) as channel:
        watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(service=""), timeout=60)
        assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
        fired = Fired(server, queued_first)
        with ThreadPoolExecutor(1) as pool:
            outcomes = pool.submit(fire, server.target, method, request, channels, calls, queued_first, fired)
            assert fired.wait(timeout=30), "the burst was sent"
            time.sleep(SIGNAL_AFTER)
            signalled = time.monotonic()
            server.process.terminate()
            exit_code = server.process.wait(timeout=DRAIN_TIMEOUT + 10)
            took = time.monotonic() - signalled
            counted = Counter(
                ("OK" if correct(response) else "WRONG") if code == grpc.StatusCode.OK else code.name
                for code, response in outcomes.result(timeout=60)
            )
        watch.cancel()
    assert exit_code == 0, server.log()[-3000:]
    assert took < DRAIN_TIMEOUT / 2, f"exit {took:.1f}s after SIGTERM: a Health.Watch stream must not hold it"
    return counted


@pytest.mark.parametrize("api", ["classify", "infer"])
@pytest.mark.parametrize(("channels", "calls"), [(1, 400), (8, 400), (1, 60)])
def test_a_burst_in_flight_at_sigterm_is_answered_or_refused_unavailable(
    model_repository: Path, tmp_path: Path, digits, api: str, channels: int, calls: int
) -> None:
    images, _ = digits
    flags = ("--drain-timeout", str(DRAIN_TIMEOUT), "--max-queue-size", "4096")
    with running_server(model_repository, *flags, workdir=tmp_path) as server:
        outcomes = burst_then_sigterm(server, api, channels, calls, images[0])
    assert sum(outcomes.values()) == calls
    assert set(outcomes) <= {"OK", "UNAVAILABLE"}, f"{api}, {channels} channel(s), {calls} calls: {dict(outcomes)}"
    assert outcomes["OK"] > 0, f"calls accepted before SIGTERM are answered: {dict(outcomes)}"


@pytest.mark.parametrize("api", ["classify", "infer"])
def test_a_burst_at_sigterm_against_a_full_queue_loses_nothing(
    model_repository: Path, tmp_path: Path, digits, api: str
) -> None:
    images, _ = digits
    flags = ("--drain-timeout", str(DRAIN_TIMEOUT), "--max-queue-size", "16", "--max-batch-size", "64")
    flags += ("--max-queue-delay-ms", "3000", "--no-adaptive-queue-delay")
    with running_server(model_repository, *flags, workdir=tmp_path) as server:
        outcomes = burst_then_sigterm(server, api, 8, 400, images[0], queued_first=16)
    assert sum(outcomes.values()) == 400
    assert set(outcomes) <= {"OK", "UNAVAILABLE", "RESOURCE_EXHAUSTED"}, dict(outcomes)
    assert outcomes["OK"] >= 16, f"the queued calls are answered: {dict(outcomes)}"
    assert outcomes["RESOURCE_EXHAUSTED"] > 0, f"the queue was full: {dict(outcomes)}"
