"""Graceful shutdown: SIGTERM in the middle of a stream of requests loses none and half-answers none.

The server batches with a fixed 1 s queue delay (adaptive delay off), so requests are in flight at any moment.
A stream of callers keeps classifying X's and O's; six digits are known to be queued (the queue-depth gauge
says so) when SIGTERM arrives. Then health must turn NOT_SERVING at once, new calls must be refused with
UNAVAILABLE, every accepted request must be answered correctly within the drain timeout, and the process must
exit 0.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from cnnserve.v1 import classifier_pb2 as pb
from cnnserve.v1 import classifier_pb2_grpc as pb_grpc
from tests.conftest import png_bytes
from tests.reliability.conftest import O_PNG, X_PNG
from tests.servers import ServerProcess, queue_depth, running_server, wait_until

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
UNAVAILABLE = grpc.StatusCode.UNAVAILABLE
QUEUED_DIGITS = 6


@dataclass(frozen=True)
class Outcome:
    code: grpc.StatusCode
    correct: bool
    sent_at: float
    done_at: float


class RequestStream:
    """Callers that classify X's and O's in a loop until stopped, each on its own channel, recording outcomes."""

    def __init__(self, target: str, callers: int) -> None:
        self.target = target
        self.outcomes: list[Outcome] = []
        self.answered = threading.Semaphore(0)
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._call_in_a_loop, args=(n,)) for n in range(callers)]

    def __enter__(self) -> RequestStream:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join()

    def _call_in_a_loop(self, number: int) -> None:
        channel = grpc.insecure_channel(self.target)
        stub = pb_grpc.ImageClassifierStub(channel)
        turn = number
        while not self._stop.is_set():
            turn += 1
            image, label = (X_PNG, "X") if turn % 2 else (O_PNG, "O")
            request = pb.ClassifyRequest(model="xo", images=[pb.Image(encoded=image)])
            sent = time.monotonic()
            try:
                answer = stub.Classify(request, timeout=20)
            except grpc.RpcError as failure:
                outcome = Outcome(failure.code(), False, sent, time.monotonic())
            else:
                correct = [r.top[0].label for r in answer.results] == [label]
                outcome = Outcome(grpc.StatusCode.OK, correct, sent, time.monotonic())
            self.outcomes.append(outcome)
            self.answered.release()
            if outcome.code != grpc.StatusCode.OK:
                time.sleep(0.005)
        channel.close()


@pytest.fixture
def draining_server(model_repository: Path, tmp_path: Path):
    flags = ("--max-queue-delay-ms", "1000", "--no-adaptive-queue-delay", "--max-batch-size", "256")
    flags += ("--drain-timeout", "15")
    with running_server(model_repository, *flags, workdir=tmp_path) as server:
        yield server


def test_sigterm_mid_stream_loses_no_request(draining_server: ServerProcess, digits) -> None:
    server = draining_server
    images, _ = digits
    channel = grpc.insecure_channel(server.target)
    stub = pb_grpc.ImageClassifierStub(channel)
    health = health_pb2_grpc.HealthStub(channel)
    digits_png = [pb.Image(encoded=png_bytes(images[i])) for i in range(QUEUED_DIGITS)]
    reference = stub.Classify(pb.ClassifyRequest(model="mnist_net", images=digits_png), timeout=10)
    expected_digits = [result.top[0].label for result in reference.results]
    digit_requests = [pb.ClassifyRequest(model="mnist_net", images=[image]) for image in digits_png]
    watch = health.Watch(health_pb2.HealthCheckRequest(service=""), timeout=30)
    assert next(watch).status == SERVING

    with RequestStream(server.target, callers=4) as stream:
        for _ in range(8):
            assert stream.answered.acquire(timeout=20), "the stream gets answers before SIGTERM"
        queued: list[Future] = [stub.Classify.future(r, timeout=20) for r in digit_requests]
        wait_until(lambda: queue_depth(server, "mnist_net") == QUEUED_DIGITS)

        signalled_at = time.monotonic()
        server.process.terminate()
        assert next(watch).status == NOT_SERVING, "health must turn NOT_SERVING as soon as SIGTERM arrives"
        watch.cancel()
        health_seen = set()
        while server.process.poll() is None:
            try:
                health_seen.add(health.Check(health_pb2.HealthCheckRequest(service=""), timeout=2).status)
            except grpc.RpcError as failure:
                health_seen.add(failure.code())
            time.sleep(0.01)
        exited_at = time.monotonic()
        exit_code = server.process.wait()
        time.sleep(0.2)

    channel.close()
    assert exit_code == 0, server.log()
    assert SERVING not in health_seen, "health must never say SERVING again once SIGTERM arrived"
    # A probe that reaches the transport in the instant between gRPC's stop (it hands no new call to a handler)
    # and the client reading GOAWAY is cancelled when the server exits; a probe fails on it as on UNAVAILABLE.
    # Health checks are not inference calls: the drain's promise (UNAVAILABLE, never CANCELLED) is asserted on
    # the stream's calls below.
    assert health_seen <= {NOT_SERVING, grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED}, health_seen
    assert [f.result().results[0].top[0].label for f in queued] == expected_digits, "queued requests finish"

    outcomes = stream.outcomes
    lost = [o for o in outcomes if not ((o.code == grpc.StatusCode.OK and o.correct) or o.code == UNAVAILABLE)]
    assert not lost, f"{len(lost)} requests lost or half-answered: {lost[:5]}"
    answered_after_sigterm = [o for o in outcomes if o.code == grpc.StatusCode.OK and o.done_at > signalled_at]
    refused_while_draining = [
        o for o in outcomes if o.code == grpc.StatusCode.UNAVAILABLE and signalled_at < o.done_at < exited_at
    ]
    assert answered_after_sigterm, "requests accepted before SIGTERM are answered after it"
    assert refused_while_draining, "calls arriving while the server drains are refused with UNAVAILABLE"
    assert "stopped" in server.log()


def test_sigterm_on_an_idle_server_exits_zero_at_once(model_repository: Path, tmp_path: Path) -> None:
    with running_server(model_repository, "--drain-timeout", "30", workdir=tmp_path) as server:
        assert server.stop(timeout=15) == 0, "an idle server does not wait out its drain timeout"


def test_requests_still_queued_when_the_drain_timeout_ends_are_answered_unavailable(
    model_repository: Path, tmp_path: Path
) -> None:
    flags = ("--max-queue-delay-ms", "5000", "--no-adaptive-queue-delay", "--max-batch-size", "64")
    flags += ("--drain-timeout", "0.5")
    with running_server(model_repository, *flags, workdir=tmp_path) as server:
        channel = grpc.insecure_channel(server.target)
        stub = pb_grpc.ImageClassifierStub(channel)
        request = pb.ClassifyRequest(model="xo", images=[pb.Image(encoded=X_PNG)])
        queued = [stub.Classify.future(request, timeout=20) for _ in range(4)]
        wait_until(lambda: queue_depth(server, "xo") == len(queued))
        assert server.stop(timeout=15) == 0
        codes = [future.exception().code() if future.exception() else grpc.StatusCode.OK for future in queued]
        channel.close()
    assert codes == [UNAVAILABLE] * len(queued), "cut off by the drain timeout: retryable, never silently dropped"
