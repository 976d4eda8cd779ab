"""Overload: bursts of ten times the queue's capacity against a real server with a bounded queue.

Each model may hold 16 images queued, and a batch waits the full 1.5 s for company (max batch 64, adaptive
delay off), so the first 16 images of a burst sit in the queue while the rest arrive. The excess must be refused
with RESOURCE_EXHAUSTED without waiting for the queue, the accepted requests must be answered correctly within
their deadline, no batch may hold more than the queue's capacity, and the server's memory must stay bounded
(its RSS is sampled from /proc during every burst).
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from cnnserve.v1 import classifier_pb2 as pb
from cnnserve.v1 import classifier_pb2_grpc as pb_grpc
from tests.conftest import png_bytes
from tests.reliability.conftest import O_PNG, X_PNG, RssSampler, rss_bytes
from tests.servers import ServerProcess, queue_depth, running_server, wait_until

CAPACITY = 16
QUEUE_DELAY_SECONDS = 1.5
BURST = 10 * CAPACITY
BURSTS = 3
MiB = 2**20
RESOURCE_EXHAUSTED = grpc.StatusCode.RESOURCE_EXHAUSTED


@pytest.fixture(scope="module")
def bounded_server(model_repository: Path, tmp_path_factory: pytest.TempPathFactory):
    flags = ("--max-queue-size", str(CAPACITY), "--max-batch-size", "64", "--no-adaptive-queue-delay")
    flags += ("--max-queue-delay-ms", str(int(QUEUE_DELAY_SECONDS * 1000)))
    with running_server(model_repository, *flags, workdir=tmp_path_factory.mktemp("bounded")) as server:
        yield server


@dataclass
class Outcome:
    expected: str
    code: grpc.StatusCode
    label: str
    details: str
    seconds: float


async def call(stub: pb_grpc.ImageClassifierStub, model: str, image: bytes, expected: str) -> Outcome:
    request = pb.ClassifyRequest(model=model, images=[pb.Image(encoded=image)])
    started = time.monotonic()
    try:
        answer = await stub.Classify(request, timeout=10)
    except grpc.aio.AioRpcError as failure:
        return Outcome(expected, failure.code(), "", failure.details() or "", time.monotonic() - started)
    return Outcome(expected, grpc.StatusCode.OK, answer.results[0].top[0].label, "", time.monotonic() - started)


async def batch_sizes(stub: pb_grpc.ImageClassifierStub, model: str) -> Counter[int]:
    """How many batches of each size `model` has run so far."""
    info = await stub.GetModel(pb.GetModelRequest(name=model), timeout=10)
    return Counter(dict(info.versions[0].statistics.batch_size_counts))


@dataclass
class Burst:
    outcomes: list[Outcome]
    batches: dict[str, Counter[int]]
    """Per model, the batches (size: count) run while the burst was answered."""


async def burst(server: ServerProcess, requests: list[tuple[str, bytes, str]]) -> Burst:
    """Send every request at once on one channel, wait for all the answers, and see which batches ran."""
    models = sorted({model for model, _, _ in requests})
    async with grpc.aio.insecure_channel(server.target) as channel:
        await channel.channel_ready()
        stub = pb_grpc.ImageClassifierStub(channel)
        before = {model: await batch_sizes(stub, model) for model in models}
        outcomes = await asyncio.gather(*(call(stub, *request) for request in requests))
        after = {model: await batch_sizes(stub, model) for model in models}
    return Burst(list(outcomes), {model: after[model] - before[model] for model in models})


def check_burst(outcomes: list[Outcome], batches: Counter[int], exact_labels: bool = True) -> None:
    """Every request of one model's burst was answered correctly or refused at once, within a bounded queue."""
    accepted = [o for o in outcomes if o.code == grpc.StatusCode.OK]
    refused = [o for o in outcomes if o.code == RESOURCE_EXHAUSTED]
    assert len(accepted) + len(refused) == len(outcomes), {o.code for o in outcomes}
    if exact_labels:
        assert all(o.label == o.expected for o in accepted), "an accepted request was answered wrongly"
    assert all(f"takes at most {CAPACITY}" in o.details for o in refused)
    assert max(batches) <= CAPACITY, f"a batch larger than the queue's capacity ran: {dict(batches)}"
    assert sum(size * count for size, count in batches.items()) == len(accepted), "every accepted image ran once"
    assert len(accepted) >= CAPACITY, "the queue's capacity is used"
    assert len(refused) >= len(outcomes) // 2, "the excess is refused"
    slowest_refusal = max(o.seconds for o in refused)
    assert slowest_refusal < QUEUE_DELAY_SECONDS, (
        f"a refusal took {slowest_refusal:.2f}s: it waited for the queue instead of coming back at once"
    )


async def test_bursts_of_ten_times_capacity_are_refused_at_once_and_memory_stays_bounded(bounded_server) -> None:
    pid = bounded_server.process.pid
    baseline = rss_bytes(pid)
    after_each: list[int] = []
    with RssSampler(pid) as rss:
        for number in range(BURSTS):
            xs = [("xo", X_PNG if i % 2 else O_PNG, "X" if i % 2 else "O") for i in range(BURST)]
            result = await burst(bounded_server, xs)
            check_burst(result.outcomes, result.batches["xo"])
            after_each.append(rss_bytes(pid))
            assert bounded_server.process.poll() is None, f"burst {number} killed the server"
    growth = rss.peak - baseline
    assert growth < 64 * MiB, f"RSS rose by {growth / MiB:.0f} MiB during the bursts"
    creep = after_each[-1] - after_each[0]
    assert creep < 16 * MiB, f"RSS crept by {creep / MiB:.0f} MiB over {BURSTS - 1} further bursts"


async def test_a_burst_on_two_models_fills_each_queue_separately(bounded_server, digits) -> None:
    images, labels = digits
    mixed = [("xo", X_PNG, "X")] * BURST
    mixed += [("mnist_net", png_bytes(images[i]), str(labels[i])) for i in range(BURST)]
    result = await burst(bounded_server, mixed)
    check_burst(result.outcomes[:BURST], result.batches["xo"])
    digits_answered = result.outcomes[BURST:]
    check_burst(digits_answered, result.batches["mnist_net"], exact_labels=False)
    accepted = [o for o in digits_answered if o.code == grpc.StatusCode.OK]
    correct = sum(o.label == o.expected for o in accepted)
    assert correct >= 0.8 * len(accepted), "accepted digits are classified (mnist_net is about 90% right)"


async def test_a_full_queue_refuses_before_decoding_anything(bounded_server) -> None:
    """Proof by the order of checks: while the queue is full even an undecodable image gets RESOURCE_EXHAUSTED."""
    async with grpc.aio.insecure_channel(bounded_server.target) as channel:
        stub = pb_grpc.ImageClassifierStub(channel)
        for _ in range(3):
            accepted = [asyncio.ensure_future(call(stub, "xo", X_PNG, "X")) for _ in range(CAPACITY)]
            await asyncio.to_thread(wait_until, lambda: queue_depth(bounded_server, "xo") == CAPACITY)
            refused = await call(stub, "xo", b"certainly not a PNG", "")
            queue_was_full = not any(future.done() for future in accepted)
            answered = await asyncio.gather(*accepted)
            assert [o.label for o in answered] == ["X"] * CAPACITY
            if queue_was_full:
                break
    assert queue_was_full, "the queued requests were answered before the probe arrived (a very slow machine?)"
    assert refused.code == RESOURCE_EXHAUSTED, refused
