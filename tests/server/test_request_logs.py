"""Request ids and structured request logs, against real servers: one with JSON logs and the request log on,
and the shared one, which runs with the defaults (text logs, no request log)."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import grpc
import pytest

from cnnserve.export import render_x
from cnnserve.server.logs import MAX_REQUEST_ID_LENGTH
from cnnserve.v1 import classifier_pb2 as pb
from cnnserve.v1 import classifier_pb2_grpc as pb_grpc
from tests.conftest import png_bytes
from tests.servers import ServerProcess, channel_to, running_server

X = pb.Image(encoded=png_bytes(render_x()))


@pytest.fixture(scope="module")
def logging_server(model_repository: Path, tmp_path_factory: pytest.TempPathFactory):
    """JSON logs from the environment, the request log from its flag."""
    with running_server(
        model_repository,
        "--request-log",
        workdir=tmp_path_factory.mktemp("request-logs"),
        env={"CNNSERVE_LOG_FORMAT": "json"},
    ) as process:
        yield process


def classify_with_id(server: ServerProcess, model: str, request_id: str | None, image: pb.Image = X):
    """Classify one image, sending `request_id` as x-request-id when given; returns (status, echoed id)."""
    metadata = [("x-request-id", request_id)] if request_id is not None else []
    with channel_to(server) as channel:
        stub = pb_grpc.ImageClassifierStub(channel)
        try:
            _, call = stub.Classify.with_call(
                pb.ClassifyRequest(model=model, images=[image]), metadata=metadata, timeout=10
            )
        except grpc.RpcError as failure:
            call = failure
        echoed = dict(call.trailing_metadata()).get("x-request-id")
        return call.code(), echoed


def json_lines(server: ServerProcess) -> list[dict]:
    """The server's log records (lines that native libraries print themselves are not records, and are skipped)."""
    return [json.loads(line) for line in server.log().splitlines() if line.startswith("{")]


def request_line(server: ServerProcess, request_id: str, timeout: float = 10) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = [r for r in json_lines(server) if r.get("request_id") == request_id]
        if found:
            (record,) = found
            return record
        time.sleep(0.05)
    raise AssertionError(f"no request log line for {request_id}:\n{server.log()}")


def test_the_server_echoes_the_callers_request_id(logging_server) -> None:
    assert classify_with_id(logging_server, "xo", "order-42") == (grpc.StatusCode.OK, "order-42")


def test_failed_calls_echo_the_request_id_too(logging_server) -> None:
    assert classify_with_id(logging_server, "nope", "lost-7") == (grpc.StatusCode.NOT_FOUND, "lost-7")


def test_the_server_makes_up_a_request_id_when_the_caller_sends_none(logging_server) -> None:
    first = classify_with_id(logging_server, "xo", None)[1]
    second = classify_with_id(logging_server, "xo", None)[1]
    assert first and second and first != second
    assert re.fullmatch("[0-9a-f]{32}", first) and re.fullmatch("[0-9a-f]{32}", second), (first, second)


def test_an_overlong_request_id_is_cut(logging_server) -> None:
    code, echoed = classify_with_id(logging_server, "xo", "a" * 1000)
    assert code == grpc.StatusCode.OK and echoed == "a" * MAX_REQUEST_ID_LENGTH


def test_each_request_is_one_json_log_line_with_its_id_model_code_and_duration(logging_server) -> None:
    classify_with_id(logging_server, "xo", "served-1")
    record = request_line(logging_server, "served-1")
    assert record["logger"] == "cnnserve.server.requests" and record["level"] == "INFO"
    assert (record["api"], record["model"], record["version"], record["code"]) == ("image", "xo", "1", "OK")
    assert record["duration_ms"] > 0 and "error" not in record
    assert record["time"].endswith("+00:00")


def test_a_failed_request_logs_its_status_and_error(logging_server) -> None:
    classify_with_id(logging_server, "xo", "broken-1", pb.Image(encoded=b"not an image"))
    record = request_line(logging_server, "broken-1")
    assert record["code"] == "INVALID_ARGUMENT" and "could not be decoded" in record["error"]
    classify_with_id(logging_server, "made_up", "unknown-1")
    record = request_line(logging_server, "unknown-1")
    assert (record["model"], record["version"], record["code"]) == ("unknown", "unknown", "NOT_FOUND")


def test_every_server_log_record_is_json_when_asked(logging_server) -> None:
    records = json_lines(logging_server)
    assert any(r["logger"] == "cnnserve.server.app" and r["message"].startswith("ready") for r in records)
    assert all({"time", "level", "logger", "message"} <= set(r) for r in records)


def test_request_logs_are_off_by_default_but_ids_are_still_echoed(server) -> None:
    assert classify_with_id(server, "xo", "quiet-1") == (grpc.StatusCode.OK, "quiet-1")
    assert "quiet-1" not in server.log()
    assert not server.log().lstrip().startswith("{"), "text logs by default"


def test_without_the_request_log_no_id_is_made_up_since_no_log_would_hold_it(server) -> None:
    assert classify_with_id(server, "xo", None) == (grpc.StatusCode.OK, None)
