"""A multi-process server (`cnnserve serve --frontends 2`): two gRPC front-end processes on one port, one engine.

Connections are spread over the front-ends by the kernel (SO_REUSEPORT), so the tests open many channels (one
connection each) and check, with psutil, that both front-ends hold some. The rest of the suite runs against
this mode too with CNNSERVE_FRONTENDS=2 in the environment (each test starts its servers with the environment).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import time
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path

import grpc
import numpy as np
import psutil
import pytest
import tritonclient.grpc as triton
import tritonclient.utils.shared_memory as shm
from tritonclient.grpc import service_pb2 as ipb
from tritonclient.grpc import service_pb2_grpc as ipb_grpc

from cnnserve.export import render_o, render_x
from cnnserve.v1 import classifier_pb2 as pb
from cnnserve.v1 import classifier_pb2_grpc as pb_grpc
from tests.conftest import png_bytes
from tests.servers import ServerProcess, running_server, wait_until, with_process_hooks

FRONTENDS = ("--frontends", "2")
CHANNELS = 16


OWN_CONNECTION = [("grpc.use_local_subchannel_pool", 1)]
"""Channel options for a connection of its own (gRPC shares one between channels to the same target otherwise)."""


def connection_to(server: ServerProcess) -> grpc.Channel:
    return grpc.insecure_channel(server.target, options=OWN_CONNECTION)


def scrape(server: ServerProcess) -> str:
    with urllib.request.urlopen(server.metrics_url, timeout=5) as answer:
        return answer.read().decode()


def sample(text: str, name: str, **labels: str) -> float:
    """The value of the sample `name` with exactly `labels` (0 when absent)."""
    wanted = ",".join(f'{key}="{value}"' for key, value in sorted(labels.items()))
    for line in text.splitlines():
        found = re.fullmatch(rf"{name}\{{(.*)\}} (\S+)", line)
        if found and ",".join(sorted(found.group(1).split(","))) == wanted:
            return float(found.group(2))
    return 0.0


def xo_request(pixels: np.ndarray | None = None) -> pb.ClassifyRequest:
    return pb.ClassifyRequest(
        model="xo", images=[pb.Image(encoded=png_bytes(render_x() if pixels is None else pixels))]
    )


def frontend_pids(server: ServerProcess) -> list[int]:
    """The front-end processes: the supervisor's children that listen on the gRPC port."""
    pids = []
    for child in psutil.Process(server.pid).children():
        try:
            if any(c.laddr.port == server.grpc_port and c.status == "LISTEN" for c in child.net_connections("tcp")):
                pids.append(child.pid)
        except psutil.NoSuchProcess:
            continue
    return sorted(pids)


def engine_pid(server: ServerProcess) -> int:
    """The engine: the child that serves the metrics port."""
    for child in psutil.Process(server.pid).children():
        if any(c.laddr.port == server.metrics_port and c.status == "LISTEN" for c in child.net_connections("tcp")):
            return child.pid
    raise AssertionError("no process of the server listens on the metrics port")


def frontend_restarts(server: ServerProcess) -> float:
    """`cnnserve_frontend_restarts_total` as /metrics says it (the supervisor counts; every process exports it)."""
    found = re.search(r"^cnnserve_frontend_restarts_total (\S+)$", scrape(server), re.MULTILINE)
    assert found, "the server does not export cnnserve_frontend_restarts_total"
    return float(found.group(1))


RESTARTED_AFTER_EXIT_1 = re.compile(r"front-end \d \(pid \d+\) exited with 1; restarting it")
"""The supervisor's log line for a front-end that exited 1 (one that could not take in the engine's view)."""


def fresh_connections(server: ServerProcess) -> Iterator[grpc.Channel]:
    """CHANNELS new connections, one at a time, each to whichever front-end the kernel hands it."""
    for _ in range(CHANNELS):
        with connection_to(server) as fresh:
            yield fresh


def answers_o(channel: grpc.Channel) -> bool:
    answer = pb_grpc.ImageClassifierStub(channel).Classify(xo_request(render_o()), timeout=10)
    return answer.results[0].top[0].label == "O"


def connected_frontends(server: ServerProcess) -> set[int]:
    """Front-ends holding at least one established connection on the gRPC port."""
    return {
        pid
        for pid in frontend_pids(server)
        if any(
            c.laddr.port == server.grpc_port and c.status == "ESTABLISHED"
            for c in psutil.Process(pid).net_connections("tcp")
        )
    }


@pytest.fixture
def channels(batching: ServerProcess) -> Iterator[list[grpc.Channel]]:
    """16 channels to the `batching` server, each its own connection."""
    server = batching
    with ExitStack() as stack:
        opened = [stack.enter_context(connection_to(server)) for _ in range(CHANNELS)]
        for channel in opened:
            grpc.channel_ready_future(channel).result(timeout=10)
        yield opened


@pytest.fixture(scope="module")
def batching(model_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """Batches of up to 16 that wait up to 3 s to fill: which calls share a batch is decided by the test."""
    flags = (*FRONTENDS, "--max-batch-size", "16", "--max-queue-delay-ms", "3000", "--no-adaptive-queue-delay")
    with running_server(model_repository, *flags, workdir=tmp_path_factory.mktemp("frontends")) as server:
        yield server


def test_the_supervisor_runs_two_front_ends_on_one_port_and_one_engine(batching: ServerProcess) -> None:
    assert len(frontend_pids(batching)) == 2
    assert engine_pid(batching) not in frontend_pids(batching)
    assert "ready: 2 front-end(s)" in batching.log()
    assert frontend_restarts(batching) == 0


def test_calls_from_every_front_end_meet_in_one_batch(batching: ServerProcess, channels: list[grpc.Channel]) -> None:
    assert len(connected_frontends(batching)) == 2, "16 connections landed on both front-ends"
    before = scrape(batching)
    with ThreadPoolExecutor(CHANNELS) as pool:
        answers = list(pool.map(lambda c: pb_grpc.ImageClassifierStub(c).Classify(xo_request(), timeout=30), channels))
    assert {answer.results[0].top[0].label for answer in answers} == {"X"}
    after = scrape(batching)
    for name in ("cnnserve_batch_size_count", "cnnserve_batch_size_sum"):
        assert sample(after, name, model="xo", version="1") - sample(before, name, model="xo", version="1") == (
            1 if name.endswith("count") else CHANNELS
        ), "the 16 calls of both front-ends ran as one batch of 16"


def test_a_burst_right_after_a_lone_caller_is_batched_by_the_engine(model_repository: Path, tmp_path: Path) -> None:
    """The engine answers a lone request sooner than a front-end does its gRPC work for the next call, so without
    the front-end's wait for company (`EngineClient.wait_for_company`) a burst could reach the engine one request
    at a time and run as a convoy, one call a batch. One front-end, so that every call of a burst shares it."""
    from tests.server.test_models_and_health import bursts_after_a_lone_caller_are_batched

    with (
        running_server(model_repository, "--frontends", "1", workdir=tmp_path) as server,
        connection_to(server) as channel,
    ):
        bursts_after_a_lone_caller_are_batched(channel)


def test_concurrent_calls_of_every_size_get_their_own_answers(model_repository: Path, tmp_path: Path) -> None:
    """Calls of 1 to 7 images, X and O mixed, 16 at a time over both front-ends: each gets its own answers
    (requests' blocks in the arena never overlap, and each answer is read from its own block). Batches hold 4
    images, so the engine answers calls of up to 4 from their batch's callback and slices the larger ones."""
    pictures = {"X": render_x(), "O": render_o()}
    rng = np.random.default_rng(0)
    calls = [list(rng.choice(["X", "O"], size=int(rng.integers(1, 8)))) for _ in range(128)]
    flags = (*FRONTENDS, "--max-batch-size", "4")
    with running_server(model_repository, *flags, workdir=tmp_path) as server, ExitStack() as stack:
        opened = [stack.enter_context(connection_to(server)) for _ in range(CHANNELS)]

        def classify(position: int) -> list[str]:
            images = [pb.Image(encoded=png_bytes(pictures[label])) for label in calls[position]]
            stub = pb_grpc.ImageClassifierStub(opened[position % CHANNELS])
            answer = stub.Classify(pb.ClassifyRequest(model="xo", images=images), timeout=30)
            return [result.top[0].label for result in answer.results]

        with ThreadPoolExecutor(CHANNELS) as pool:
            assert list(pool.map(classify, range(len(calls)))) == calls
        assert len(connected_frontends(server)) == 2


def test_metrics_and_statistics_count_the_calls_of_every_front_end(
    batching: ServerProcess, channels: list[grpc.Channel]
) -> None:
    inference = ipb_grpc.GRPCInferenceServiceStub(channels[0])

    def successes() -> int:
        """The successes counted; every figure has counted each of them (front-ends send their requests' figures
        summed, and all of them when the engine asks before it answers)."""
        statistics = inference.ModelStatistics(ipb.ModelStatisticsRequest(name="xo"), timeout=10).model_stats[0]
        figures = statistics.inference_stats
        parts = (figures.queue, figures.compute_input, figures.compute_infer, figures.compute_output)
        assert [part.count for part in parts] == [figures.success.count] * 4, figures
        assert figures.success.ns >= figures.queue.ns + figures.compute_infer.ns, "each part lies within its call"
        return figures.success.count

    before, scraped = successes(), scrape(batching)
    with ThreadPoolExecutor(CHANNELS) as pool:
        list(pool.map(lambda c: pb_grpc.ImageClassifierStub(c).Classify(xo_request(), timeout=30), channels * 2))
    assert successes() - before == 2 * CHANNELS, "ModelStatistics counts every front-end's answered calls at once"
    labels = {"model": "xo", "version": "1", "api": "image", "code": "OK"}
    counted = sample(scrape(batching), "cnnserve_requests_total", **labels) - sample(
        scraped, "cnnserve_requests_total", **labels
    )
    assert counted == 2 * CHANNELS
    assert sample(scrape(batching), "cnnserve_requests_in_flight", model="xo", version="1", api="image") == 0


def test_a_call_whose_deadline_passes_in_the_queue_is_never_computed(batching: ServerProcess) -> None:
    before = scrape(batching)
    with grpc.insecure_channel(batching.target) as channel, pytest.raises(grpc.RpcError) as failure:
        pb_grpc.ImageClassifierStub(channel).Classify(xo_request(), timeout=0.3)
    assert failure.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    wait_until(lambda: sample(scrape(batching), "cnnserve_queue_depth", model="xo", version="1") == 0)
    time.sleep(0.5)
    after = scrape(batching)
    assert sample(after, "cnnserve_executions_total", model="xo", version="1") == sample(
        before, "cnnserve_executions_total", model="xo", version="1"
    )


def test_a_cancelled_call_leaves_the_engine_queue_and_is_never_computed(batching: ServerProcess) -> None:
    before = scrape(batching)
    with grpc.insecure_channel(batching.target) as channel:
        call = pb_grpc.ImageClassifierStub(channel).Classify.future(xo_request(), timeout=30)
        wait_until(lambda: sample(scrape(batching), "cnnserve_queue_depth", model="xo", version="1") == 1)
        call.cancel()
        wait_until(lambda: sample(scrape(batching), "cnnserve_queue_depth", model="xo", version="1") == 0)
    time.sleep(0.5)
    after = scrape(batching)
    assert sample(after, "cnnserve_executions_total", model="xo", version="1") == sample(
        before, "cnnserve_executions_total", model="xo", version="1"
    )
    assert sample(after, "cnnserve_rejections_total", model="xo", reason="cancelled") > sample(
        before, "cnnserve_rejections_total", model="xo", reason="cancelled"
    )


def test_priorities_and_a_full_queue_are_the_engines(model_repository: Path, tmp_path: Path) -> None:
    flags = (*FRONTENDS, "--max-queue-size", "4", "--max-batch-size", "8", "--max-queue-delay-ms", "3000")
    flags += ("--no-adaptive-queue-delay", "--priority-levels", "2")
    with running_server(model_repository, *flags, workdir=tmp_path) as server, ExitStack() as stack:
        opened = [stack.enter_context(connection_to(server)) for _ in range(CHANNELS)]
        parked = pb_grpc.ImageClassifierStub(opened[0]).Classify.future(
            pb.ClassifyRequest(model="xo", images=[pb.Image(encoded=png_bytes(render_x()))] * 4), timeout=30
        )
        wait_until(lambda: sample(scrape(server), "cnnserve_queue_depth", model="xo", version="1") == 4)
        for channel in opened[1:]:
            started = time.monotonic()
            with pytest.raises(grpc.RpcError) as failure:
                pb_grpc.ImageClassifierStub(channel).Classify(xo_request(), timeout=10)
            assert failure.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert time.monotonic() - started < 1.0, "refused at once, not after the queue delay"
        assert len(parked.result(timeout=10).results) == 4
        inference = ipb_grpc.GRPCInferenceServiceStub(opened[1])
        request = ipb.ModelInferRequest(model_name="xo", raw_input_contents=[np.zeros(81, np.float32).tobytes()])
        request.inputs.add(name="input", datatype="FP32", shape=[1, 1, 9, 9])
        request.parameters["priority"].int64_param = 3
        with pytest.raises(grpc.RpcError) as failure:
            inference.ModelInfer(request, timeout=10)
        assert failure.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "priority 3" in failure.value.details()


def test_unload_and_load_on_one_front_end_apply_to_every_front_end(model_repository: Path, tmp_path: Path) -> None:
    with running_server(model_repository, *FRONTENDS, workdir=tmp_path) as server, ExitStack() as stack:
        opened = [stack.enter_context(connection_to(server)) for _ in range(CHANNELS)]
        for channel in opened:
            grpc.channel_ready_future(channel).result(timeout=10)
        assert len(connected_frontends(server)) == 2
        control = ipb_grpc.GRPCInferenceServiceStub(opened[0])
        control.RepositoryModelUnload(ipb.RepositoryModelUnloadRequest(model_name="xo"), timeout=30)
        for channel in opened:
            ready = ipb_grpc.GRPCInferenceServiceStub(channel).ModelReady(ipb.ModelReadyRequest(name="xo"), timeout=10)
            assert not ready.ready
            with pytest.raises(grpc.RpcError) as failure:
                pb_grpc.ImageClassifierStub(channel).Classify(xo_request(), timeout=10)
            assert failure.value.code() in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.UNAVAILABLE)
        control.RepositoryModelLoad(ipb.RepositoryModelLoadRequest(model_name="xo"), timeout=60)
        for channel in opened:
            answer = pb_grpc.ImageClassifierStub(channel).Classify(xo_request(render_o()), timeout=10)
            assert answer.results[0].top[0].label == "O"


def test_a_new_version_on_disk_is_served_by_every_front_end(model_repository: Path, tmp_path: Path) -> None:
    root = tmp_path / "repository"
    shutil.copytree(model_repository / "xo", root / "xo")
    flags = (*FRONTENDS, "--repository-poll-seconds", "0.3")
    with running_server(root, *flags, workdir=tmp_path) as server, ExitStack() as stack:
        opened = [stack.enter_context(connection_to(server)) for _ in range(CHANNELS)]
        shutil.copytree(root / "xo" / "1", root / "xo" / "2")

        def every_front_end_serves_version_2() -> bool:
            versions = {pb_grpc.ImageClassifierStub(c).Classify(xo_request(), timeout=10).version for c in opened}
            return versions == {2}

        wait_until(every_front_end_serves_version_2, "version 2 served on every connection", timeout=30)
        assert len(connected_frontends(server)) == 2


def test_a_region_registered_on_one_front_end_serves_calls_on_every_front_end(
    model_repository: Path, tmp_path: Path
) -> None:
    """Triton's system shared memory: register once, on any connection; infer on every connection, reading the
    input from the region and writing the output into it."""
    with running_server(model_repository, *FRONTENDS, workdir=tmp_path) as server:
        picture = ((render_x().astype(np.float32) / 255.0 - 0.5) / 0.5)[None, None]
        name, key = f"frontends-{os.getpid()}", f"/cnnserve_frontends_{os.getpid()}"
        handle = shm.create_shared_memory_region(name, key, 81 * 4 + 2 * 4)
        shm.set_shared_memory_region(handle, [picture])
        clients = [triton.InferenceServerClient(server.target, channel_args=OWN_CONNECTION) for _ in range(CHANNELS)]
        try:
            for client in clients:
                assert client.is_server_ready()
            assert len(connected_frontends(server)) == 2
            clients[0].register_system_shared_memory(name, key, 81 * 4 + 2 * 4)
            for client in clients:
                wait_until(
                    lambda c=client: name in {r.name for r in c.get_system_shared_memory_status().regions.values()}
                )
                infer_input = triton.InferInput("input", [1, 1, 9, 9], "FP32")
                infer_input.set_shared_memory(name, 81 * 4)
                output = triton.InferRequestedOutput("output")
                output.set_shared_memory(name, 2 * 4, offset=81 * 4)
                client.infer("xo", [infer_input], outputs=[output])
                probabilities = shm.get_contents_as_numpy(handle, np.float32, [1, 2], offset=81 * 4)
                assert probabilities.argmax() == 1, "X"
            clients[-1].unregister_system_shared_memory(name)
            for client in clients:
                wait_until(lambda c=client: not c.get_system_shared_memory_status().regions)
        finally:
            for client in clients:
                client.close()
            shm.destroy_shared_memory_region(handle)


def test_a_killed_front_end_is_restarted_and_only_its_own_calls_fail(model_repository: Path, tmp_path: Path) -> None:
    with running_server(model_repository, *FRONTENDS, workdir=tmp_path) as server, ExitStack() as stack:
        opened = [stack.enter_context(connection_to(server)) for _ in range(CHANNELS)]
        for channel in opened:
            pb_grpc.ImageClassifierStub(channel).Classify(xo_request(), timeout=10)
        victim, survivor = frontend_pids(server)
        survivors_connections = {
            c.raddr.port for c in psutil.Process(survivor).net_connections("tcp") if c.status == "ESTABLISHED"
        }
        psutil.Process(victim).send_signal(signal.SIGKILL)
        codes = []
        for channel in opened:
            try:
                pb_grpc.ImageClassifierStub(channel).Classify(xo_request(), timeout=10)
                codes.append(grpc.StatusCode.OK)
            except grpc.RpcError as failure:
                codes.append(failure.code())
        assert set(codes) <= {grpc.StatusCode.OK, grpc.StatusCode.UNAVAILABLE}, codes
        assert codes.count(grpc.StatusCode.OK) >= len(survivors_connections)
        wait_until(lambda: len(frontend_pids(server)) == 2, "the front-end was restarted", timeout=30)
        assert victim not in frontend_pids(server) and survivor in frontend_pids(server)
        assert frontend_restarts(server) == 1
        for fresh in fresh_connections(server):
            assert answers_o(fresh)
        assert server.process.poll() is None


def test_a_front_end_that_cannot_take_in_the_first_catalog_is_started_afresh(
    model_repository: Path, tmp_path: Path
) -> None:
    trigger = tmp_path / "fail-the-next-catalog"
    trigger.touch()
    env = with_process_hooks(CNNSERVE_TEST_CATALOG_FAULT=str(trigger))
    with running_server(model_repository, *FRONTENDS, workdir=tmp_path, env=env) as server, ExitStack() as stack:
        assert not trigger.exists(), "no front-end received a catalog"
        log = server.log_path.read_text()
        assert "could not take in the engine's catalog" in log
        assert RESTARTED_AFTER_EXIT_1.search(log), log
        wait_until(lambda: len(frontend_pids(server)) == 2, "both front-ends listen", timeout=30)
        opened = [stack.enter_context(connection_to(server)) for _ in range(CHANNELS)]
        for channel in opened:
            assert answers_o(channel)
        assert len(connected_frontends(server)) == 2
        assert frontend_restarts(server) == 1


def test_a_front_end_that_cannot_take_in_a_later_catalog_drains_and_is_started_afresh(
    model_repository: Path, tmp_path: Path
) -> None:
    """A reload's catalog that one front-end fails on: that front-end drains (calls on every connection meanwhile
    are answered, or refused UNAVAILABLE to be retried, never lost), stops and is replaced; the other serves on,
    and nothing is left serving from the catalog before the reload."""
    trigger = tmp_path / "fail-the-next-catalog"
    env = with_process_hooks(CNNSERVE_TEST_CATALOG_FAULT=str(trigger))
    with running_server(model_repository, *FRONTENDS, workdir=tmp_path, env=env) as server, ExitStack() as stack:
        opened = [stack.enter_context(connection_to(server)) for _ in range(CHANNELS)]
        for channel in opened:
            pb_grpc.ImageClassifierStub(channel).Classify(xo_request(), timeout=10)
        before = frontend_pids(server)

        def one_front_end_was_replaced() -> bool:
            now = frontend_pids(server)
            return len(now) == 2 and len(set(now) & set(before)) == 1

        def call_until_replaced(channel: grpc.Channel) -> list[grpc.StatusCode]:
            codes = []
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and not one_front_end_was_replaced():
                try:
                    pb_grpc.ImageClassifierStub(channel).Classify(xo_request(), timeout=10)
                    codes.append(grpc.StatusCode.OK)
                except grpc.RpcError as failure:
                    codes.append(failure.code())
            return codes

        with ThreadPoolExecutor(CHANNELS) as callers:
            calling = [callers.submit(call_until_replaced, channel) for channel in opened]
            trigger.touch()
            control = ipb_grpc.GRPCInferenceServiceStub(opened[0])
            control.RepositoryModelUnload(ipb.RepositoryModelUnloadRequest(model_name="mnist_net"), timeout=30)
            wait_until(lambda: not trigger.exists(), "a front-end received the new catalog", timeout=10)
            wait_until(one_front_end_was_replaced, "the broken front-end was replaced", timeout=60)
            codes = [code for caller in calling for code in caller.result()]
        assert set(codes) <= {grpc.StatusCode.OK, grpc.StatusCode.UNAVAILABLE}, set(codes)
        assert codes.count(grpc.StatusCode.OK) > len(codes) // 2
        assert RESTARTED_AFTER_EXIT_1.search(server.log())
        assert frontend_restarts(server) == 1
        for fresh in fresh_connections(server):
            stub = ipb_grpc.GRPCInferenceServiceStub(fresh)
            assert not stub.ModelReady(ipb.ModelReadyRequest(name="mnist_net"), timeout=10).ready
            assert answers_o(fresh)
        assert server.process.poll() is None


def test_a_killed_engine_fails_every_call_unavailable_at_once_and_the_server_exits_1(
    model_repository: Path, tmp_path: Path
) -> None:
    flags = (*FRONTENDS, "--max-queue-delay-ms", "5000", "--no-adaptive-queue-delay", "--max-batch-size", "64")
    with running_server(model_repository, *flags, workdir=tmp_path) as server, ExitStack() as stack:
        opened = [stack.enter_context(connection_to(server)) for _ in range(CHANNELS)]
        parked = [pb_grpc.ImageClassifierStub(c).Classify.future(xo_request(), timeout=30) for c in opened]
        wait_until(lambda: sample(scrape(server), "cnnserve_queue_depth", model="xo", version="1") == CHANNELS)
        frontends = frontend_pids(server)
        killed = time.monotonic()
        psutil.Process(engine_pid(server)).send_signal(signal.SIGKILL)
        codes = []
        for call in parked:
            try:
                call.result(timeout=10)
                codes.append(grpc.StatusCode.OK)
            except grpc.RpcError:
                codes.append(call.code())
        assert set(codes) == {grpc.StatusCode.UNAVAILABLE}, codes
        assert time.monotonic() - killed < 3.0, "waiting calls fail at once, they do not wait for their deadline"
        assert server.process.wait(timeout=30) == 1
        assert not any(psutil.pid_exists(pid) and psutil.Process(pid).status() != "zombie" for pid in frontends)
        assert "the engine exited" in server.log()


def test_sigterm_under_load_answers_every_accepted_call(model_repository: Path, tmp_path: Path, digits) -> None:
    from tests.reliability.test_shutdown_burst import DRAIN_TIMEOUT, burst_then_sigterm

    images, _ = digits
    flags = (*FRONTENDS, "--drain-timeout", str(DRAIN_TIMEOUT), "--max-queue-size", "4096")
    for api in ("classify", "infer"):
        with running_server(model_repository, *flags, workdir=tmp_path / api) as server:
            outcomes = burst_then_sigterm(server, api, 8, 400, images[0])
        assert sum(outcomes.values()) == 400
        assert set(outcomes) <= {"OK", "UNAVAILABLE"}, f"{api}: {dict(outcomes)}"
        assert outcomes["OK"] > 0
