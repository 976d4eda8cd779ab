"""Prometheus metrics, scraped over HTTP from a real server after real gRPC traffic and parsed with
prometheus-client's own parser.

The server here batches at most 4 images, waits up to 2 s for a batch to fill and queues at most 6 images, so
batches form deterministically: a 4-image request runs at once as one batch, four concurrent 1-image requests
run as one batch, and a parked 3-image request leaves room for 3 more images only.
"""

from __future__ import annotations

import shutil
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from cnnserve.export import render_o, render_x
from cnnserve.v1 import classifier_pb2 as pb
from cnnserve.v1 import classifier_pb2_grpc as pb_grpc
from tests.conftest import png_bytes
from tests.servers import ServerProcess, channel_to, running_server

BATCHING = (
    "--max-batch-size",
    "4",
    "--max-queue-delay-ms",
    "2000",
    "--no-adaptive-queue-delay",
    "--max-queue-size",
    "6",
)
LABEL_NAMES = {"model", "version", "api", "code", "reason", "provider", "method", "le"}


class Scrape:
    """One scrape of /metrics: every sample, looked up by name and labels."""

    def __init__(self, text: str) -> None:
        self.families = list(text_string_to_metric_families(text))
        self.samples = {
            (sample.name, frozenset(sample.labels.items())): sample.value
            for family in self.families
            for sample in family.samples
        }

    def value(self, name: str, **labels: str) -> float:
        """The sample's value, 0 when the server does not export it (yet)."""
        return self.samples.get((name, frozenset(labels.items())), 0.0)

    def names(self) -> set[str]:
        return {name for name, _ in self.samples}


def scrape(server: ServerProcess) -> Scrape:
    with urllib.request.urlopen(server.metrics_url, timeout=10) as response:
        assert response.status == 200
        return Scrape(response.read().decode())


def wait_for(server: ServerProcess, condition: Callable[[Scrape], bool], timeout: float = 15) -> Scrape:
    """Scrape until `condition` holds (for what the server counts after the client has its answer)."""
    deadline = time.monotonic() + timeout
    while True:
        current = scrape(server)
        if condition(current):
            return current
        if time.monotonic() > deadline:
            raise AssertionError(f"the metrics did not reach the expected state within {timeout}s")
        time.sleep(0.05)


def image(pixels=None) -> pb.Image:
    return pb.Image(encoded=png_bytes(render_x() if pixels is None else pixels))


def digit_tensor() -> pb.Image:
    return pb.Image(tensor=pb.Tensor(dtype=pb.UINT8, shape=[28, 28], data=bytes(784)))


@pytest.fixture(scope="module")
def batching_server(model_repository: Path, tmp_path_factory: pytest.TempPathFactory):
    with running_server(model_repository, *BATCHING, workdir=tmp_path_factory.mktemp("metrics")) as process:
        yield process


@pytest.fixture(scope="module")
def stub(batching_server: ServerProcess):
    with channel_to(batching_server) as channel:
        yield pb_grpc.ImageClassifierStub(channel)


def test_metrics_are_prometheus_text_with_the_process_and_python_collectors(batching_server) -> None:
    with urllib.request.urlopen(batching_server.metrics_url, timeout=10) as response:
        assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        current = Scrape(response.read().decode())
    names = current.names()
    assert {"process_cpu_seconds_total", "process_resident_memory_bytes", "python_info"} <= names
    assert any(name.startswith("python_gc_") for name in names)
    assert not [name for name in names if name.endswith("_created")], "no _created series"


def test_metric_names_follow_prometheus_conventions_and_labels_are_bounded(batching_server, stub) -> None:
    stub.Classify(pb.ClassifyRequest(model="xo", images=[image()] * 4), timeout=10)
    families = {f.name: f for f in scrape(batching_server).families if f.name.startswith("cnnserve_")}
    kinds = {name: family.type for name, family in families.items()}
    assert kinds == {
        "cnnserve_requests": "counter",
        "cnnserve_requests_in_flight": "gauge",
        "cnnserve_request_duration_seconds": "histogram",
        "cnnserve_preprocess_duration_seconds": "histogram",
        "cnnserve_queue_wait_seconds": "histogram",
        "cnnserve_batch_compute_seconds": "histogram",
        "cnnserve_batch_size": "histogram",
        "cnnserve_inferences": "counter",
        "cnnserve_executions": "counter",
        "cnnserve_rejections": "counter",
        "cnnserve_queue_depth": "gauge",
        "cnnserve_model_ready": "gauge",
        "cnnserve_model_load_seconds": "gauge",
        "cnnserve_model_load_failures": "counter",
        "cnnserve_explanation_rows": "counter",
        "cnnserve_frontend_restarts": "counter",
    }
    for family in families.values():
        for sample in family.samples:
            if family.type == "counter":
                assert sample.name.endswith("_total"), sample.name
            assert set(sample.labels) <= LABEL_NAMES, f"{sample.name} has unbounded labels {set(sample.labels)}"
    buckets = [float(s.labels["le"]) for s in families["cnnserve_request_duration_seconds"].samples if "le" in s.labels]
    assert min(buckets) <= 0.0001 and max(b for b in buckets if b != float("inf")) >= 5, "µs to seconds"


def test_one_call_moves_every_stage_once(batching_server, stub) -> None:
    before = scrape(batching_server)
    stub.Classify(pb.ClassifyRequest(model="mnist_net", images=[image(), image(), image(), image()]), timeout=10)
    after = scrape(batching_server)

    def moved(name: str, **labels: str) -> float:
        return after.value(name, **labels) - before.value(name, **labels)

    model = {"model": "mnist_net", "version": "1"}
    assert moved("cnnserve_requests_total", **model, api="image", code="OK") == 1
    assert moved("cnnserve_request_duration_seconds_count", **model, api="image") == 1
    assert moved("cnnserve_request_duration_seconds_bucket", **model, api="image", le="+Inf") == 1
    assert moved("cnnserve_request_duration_seconds_sum", **model, api="image") > 0
    assert moved("cnnserve_preprocess_duration_seconds_count", **model) == 1
    assert moved("cnnserve_queue_wait_seconds_count", **model) == 1
    assert moved("cnnserve_batch_compute_seconds_count", **model) == 1
    assert moved("cnnserve_batch_size_count", **model) == 1
    assert moved("cnnserve_batch_size_sum", **model) == 4
    assert moved("cnnserve_batch_size_bucket", **model, le="2.0") == 0
    assert moved("cnnserve_batch_size_bucket", **model, le="4.0") == 1
    assert moved("cnnserve_inferences_total", **model) == 4
    assert moved("cnnserve_executions_total", **model) == 1
    assert after.value("cnnserve_requests_in_flight", **model, api="image") == 0


def test_concurrent_calls_run_as_one_batch_and_the_batch_size_histogram_shows_it(batching_server, stub) -> None:
    before = scrape(batching_server)
    calls = [stub.Classify.future(pb.ClassifyRequest(model="xo", images=[image()]), timeout=10) for _ in range(4)]
    assert [call.result().results[0].top[0].label for call in calls] == ["X"] * 4
    after = scrape(batching_server)

    def moved(name: str, **labels: str) -> float:
        return after.value(name, **labels) - before.value(name, **labels)

    model = {"model": "xo", "version": "1"}
    assert moved("cnnserve_requests_total", **model, api="image", code="OK") == 4
    assert moved("cnnserve_executions_total", **model) == 1, "four callers, one batch"
    assert moved("cnnserve_inferences_total", **model) == 4
    assert moved("cnnserve_batch_size_bucket", **model, le="2.0") == 0
    assert moved("cnnserve_batch_size_bucket", **model, le="4.0") == 1
    assert moved("cnnserve_queue_wait_seconds_count", **model) == 4, "one queue wait per caller"
    assert moved("cnnserve_batch_compute_seconds_count", **model) == 1, "one compute time per batch"
    average_batch = after.value("cnnserve_inferences_total", **model) / after.value(
        "cnnserve_executions_total", **model
    )
    assert average_batch > 1


def test_requests_for_unknown_models_count_under_one_bounded_label(batching_server, stub) -> None:
    before = scrape(batching_server)
    for name in ("no_such_model", "another_made_up_name"):
        with pytest.raises(grpc.RpcError) as failure:
            stub.Classify(pb.ClassifyRequest(model=name, images=[image()]), timeout=10)
        assert failure.value.code() == grpc.StatusCode.NOT_FOUND
    after = scrape(batching_server)
    unknown = {"model": "unknown", "version": "unknown", "api": "image", "code": "NOT_FOUND"}
    assert after.value("cnnserve_requests_total", **unknown) - before.value("cnnserve_requests_total", **unknown) == 2
    assert not [labels for name, labels in after.samples if ("model", "no_such_model") in labels]
    assert after.value("cnnserve_rejections_total", model="unknown", reason="invalid_input") == 0


def test_invalid_input_is_counted_as_a_rejection(batching_server, stub) -> None:
    before = scrape(batching_server)
    with pytest.raises(grpc.RpcError) as failure:
        stub.Classify(pb.ClassifyRequest(model="xo", images=[pb.Image(encoded=b"not an image")]), timeout=10)
    assert failure.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    after = scrape(batching_server)
    labels = {"model": "xo", "version": "1", "api": "image", "code": "INVALID_ARGUMENT"}
    assert after.value("cnnserve_requests_total", **labels) - before.value("cnnserve_requests_total", **labels) == 1
    rejected = {"model": "xo", "reason": "invalid_input"}
    assert after.value("cnnserve_rejections_total", **rejected) - before.value("cnnserve_rejections_total", **rejected)


def test_a_full_queue_refuses_shows_its_depth_and_counts_the_rejection(batching_server, stub) -> None:
    before = scrape(batching_server)
    parked = stub.Classify.future(pb.ClassifyRequest(model="xo", images=[image()] * 3), timeout=10)
    # Queue depths are read live as the scrape runs, after it has brought in the counts: a request that arrives
    # in between shows in the depth one scrape before it shows in flight.
    in_flight = {"model": "xo", "version": "1", "api": "image"}
    queued = wait_for(
        batching_server,
        lambda s: (
            s.value("cnnserve_queue_depth", model="xo", version="1") == 3
            and s.value("cnnserve_requests_in_flight", **in_flight) > 0
        ),
    )
    assert queued.value("cnnserve_requests_in_flight", **in_flight) == 1

    with pytest.raises(grpc.RpcError) as failure:
        stub.Classify(pb.ClassifyRequest(model="xo", images=[image()] * 4), timeout=10)
    assert failure.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    last = stub.Classify(pb.ClassifyRequest(model="xo", images=[image(render_o())]), timeout=10)
    assert last.results[0].top[0].label == "O" and len(parked.result().results) == 3

    after = scrape(batching_server)
    rejected = {"model": "xo", "reason": "queue_full"}
    assert after.value("cnnserve_rejections_total", **rejected) - before.value("cnnserve_rejections_total", **rejected)
    exhausted = {"model": "xo", "version": "1", "api": "image", "code": "RESOURCE_EXHAUSTED"}
    assert after.value("cnnserve_requests_total", **exhausted) - before.value("cnnserve_requests_total", **exhausted)
    assert after.value("cnnserve_queue_depth", model="xo", version="1") == 0
    batch = {"model": "xo", "version": "1"}
    assert after.value("cnnserve_batch_size_sum", **batch) - before.value("cnnserve_batch_size_sum", **batch) == 4


def test_a_call_whose_deadline_passes_in_the_queue_counts_as_deadline_exceeded(batching_server, stub) -> None:
    reason = {"model": "mnist_net", "reason": "deadline_exceeded"}
    before = scrape(batching_server).value("cnnserve_rejections_total", **reason)
    with pytest.raises(grpc.RpcError) as failure:
        stub.Classify(pb.ClassifyRequest(model="mnist_net", images=[digit_tensor()]), timeout=0.3)
    assert failure.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    counted = {"model": "mnist_net", "version": "1", "api": "image", "code": "DEADLINE_EXCEEDED"}
    # One scrape reads the request counter before the rejection counter, so wait until it shows both.
    after = wait_for(
        batching_server,
        lambda s: (
            s.value("cnnserve_rejections_total", **reason) > before and s.value("cnnserve_requests_total", **counted)
        ),
    )
    assert after.value("cnnserve_rejections_total", model="mnist_net", reason="cancelled") == 0


def test_a_call_the_client_cancels_counts_as_cancelled(batching_server, stub) -> None:
    reason = {"model": "mnist_net", "reason": "cancelled"}
    before = scrape(batching_server).value("cnnserve_rejections_total", **reason)
    call = stub.Classify.future(pb.ClassifyRequest(model="mnist_net", images=[digit_tensor()]), timeout=10)
    wait_for(batching_server, lambda s: s.value("cnnserve_queue_depth", model="mnist_net", version="1") == 1)
    call.cancel()
    counted = {"model": "mnist_net", "version": "1", "api": "image", "code": "CANCELLED"}
    wait_for(
        batching_server,
        lambda s: (
            s.value("cnnserve_rejections_total", **reason) > before
            and s.value("cnnserve_requests_total", **counted)
            and s.value("cnnserve_requests_in_flight", model="mnist_net", version="1", api="image") == 0
        ),
    )


def test_ready_models_report_version_provider_and_load_time(batching_server) -> None:
    current = scrape(batching_server)
    for model in ("xo", "mnist_net"):
        assert current.value("cnnserve_model_ready", model=model, version="1", provider="CPUExecutionProvider") == 1
        assert current.value("cnnserve_model_load_seconds", model=model, version="1") > 0
        assert ("cnnserve_queue_depth", frozenset({"model": model, "version": "1"}.items())) in current.samples


def test_a_model_that_failed_to_load_reports_not_ready(model_repository: Path, tmp_path: Path) -> None:
    repository = tmp_path / "models"
    shutil.copytree(model_repository / "xo", repository / "xo")
    (repository / "broken" / "1").mkdir(parents=True)
    (repository / "broken" / "1" / "model.onnx").write_bytes(b"this is not an ONNX model")
    with running_server(repository, workdir=tmp_path / "server") as process:
        current = scrape(process)
    assert current.value("cnnserve_model_ready", model="broken", version="1", provider="none") == 0
    assert ("cnnserve_model_ready", frozenset({"model": "broken", "version": "1", "provider": "none"}.items())) in (
        current.samples
    ), "a failed version is exported as not ready, so the ModelNotReady alert can fire"
    assert current.value("cnnserve_model_ready", model="xo", version="1", provider="CPUExecutionProvider") == 1
    assert current.value("cnnserve_model_load_seconds", model="broken", version="1") == 0


def test_a_version_retired_by_a_reload_leaves_no_series_behind(model_repository: Path, tmp_path: Path) -> None:
    repository = tmp_path / "models"
    shutil.copytree(model_repository / "xo", repository / "xo")

    def only_version_2(current: Scrape) -> bool:
        ours = [dict(labels) for name, labels in current.samples if name.startswith("cnnserve_")]
        return {labels["version"] for labels in ours if "version" in labels} == {"2"}

    polling = ("--repository-poll-seconds", "0.2")
    with running_server(repository, *polling, workdir=tmp_path / "server") as process, channel_to(process) as channel:
        stub = pb_grpc.ImageClassifierStub(channel)
        assert stub.Classify(pb.ClassifyRequest(model="xo", images=[image()]), timeout=10).version == 1
        assert scrape(process).value("cnnserve_requests_total", model="xo", version="1", api="image", code="OK")
        shutil.copytree(repository / "xo" / "1", repository / "xo" / "2")
        current = wait_for(process, only_version_2)
        assert stub.Classify(pb.ClassifyRequest(model="xo", images=[image()]), timeout=10).version == 2
    assert current.value("cnnserve_model_ready", model="xo", version="2", provider="CPUExecutionProvider") == 1
