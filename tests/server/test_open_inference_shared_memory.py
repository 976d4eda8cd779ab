"""System shared memory, driven by Triton's own client and its shared-memory helpers against a real server."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as triton
import tritonclient.utils.shared_memory as shm
from tritonclient.utils import InferenceServerException

from cnnserve.export import render_o, render_x
from tests.servers import ServerProcess, running_server

FLOAT = 4
XO_IMAGE_BYTES = FLOAT * 9 * 9


@pytest.fixture(scope="module")
def client(server: ServerProcess) -> Iterator[triton.InferenceServerClient]:
    with triton.InferenceServerClient(server.target) as client:
        yield client
        client.unregister_system_shared_memory()


class Region:
    """A POSIX shared memory object made with tritonclient, registered with the server, removed afterwards."""

    def __init__(self, client: triton.InferenceServerClient, byte_size: int, register: bool = True) -> None:
        self.name = f"region-{uuid.uuid4().hex[:8]}"
        self.key = f"/cnnserve_test_{uuid.uuid4().hex[:12]}"
        self.byte_size = byte_size
        self.handle = shm.create_shared_memory_region(self.name, self.key, byte_size)
        self.client = client
        if register:
            client.register_system_shared_memory(self.name, self.key, byte_size)

    def write(self, *arrays: np.ndarray, offset: int = 0) -> None:
        shm.set_shared_memory_region(self.handle, list(arrays), offset=offset)

    def read(self, shape: list[int], offset: int = 0) -> np.ndarray:
        return shm.get_contents_as_numpy(self.handle, np.float32, shape, offset=offset)

    def remove(self) -> None:
        self.client.unregister_system_shared_memory(self.name)
        shm.destroy_shared_memory_region(self.handle)


@pytest.fixture
def region_of(client: triton.InferenceServerClient) -> Iterator:
    made: list[Region] = []

    def make(byte_size: int, register: bool = True) -> Region:
        made.append(Region(client, byte_size, register))
        return made[-1]

    yield make
    for region in made:
        region.remove()


def xo_input(*pictures: np.ndarray) -> np.ndarray:
    return ((np.stack(pictures).astype(np.float32) / 255.0 - 0.5) / 0.5)[:, np.newaxis]


def input_in(region: Region, rows: int, offset: int = 0, byte_size: int | None = None) -> triton.InferInput:
    infer_input = triton.InferInput("input", [rows, 1, 9, 9], "FP32")
    infer_input.set_shared_memory(region.name, byte_size or rows * XO_IMAGE_BYTES, offset=offset)
    return infer_input


def output_in(region: Region, byte_size: int, offset: int = 0) -> triton.InferRequestedOutput:
    output = triton.InferRequestedOutput("output")
    output.set_shared_memory(region.name, byte_size, offset=offset)
    return output


def failure(call) -> InferenceServerException:
    with pytest.raises(InferenceServerException) as raised:
        call()
    return raised.value


def test_the_server_announces_system_shared_memory(client) -> None:
    assert "system_shared_memory" in client.get_server_metadata().extensions


def test_a_registered_region_is_listed_until_unregistered(client, region_of) -> None:
    region = region_of(2 * XO_IMAGE_BYTES)
    status = client.get_system_shared_memory_status(region.name)
    assert status.regions[region.name].key == region.key
    assert status.regions[region.name].byte_size == 2 * XO_IMAGE_BYTES
    assert region.name in client.get_system_shared_memory_status().regions
    client.unregister_system_shared_memory(region.name)
    assert region.name not in client.get_system_shared_memory_status().regions
    assert failure(lambda: client.get_system_shared_memory_status(region.name)).status() == "StatusCode.NOT_FOUND"


def test_inputs_read_from_shared_memory_give_the_answer_raw_bytes_give(client, region_of) -> None:
    pictures = xo_input(render_x(), render_o(), render_x(stroke=1.5))
    region = region_of(len(pictures) * XO_IMAGE_BYTES)
    region.write(pictures)
    from_memory = client.infer("xo", [input_in(region, len(pictures))]).as_numpy("output")
    raw = triton.InferInput("input", list(pictures.shape), "FP32")
    raw.set_data_from_numpy(pictures)
    np.testing.assert_allclose(from_memory, client.infer("xo", [raw]).as_numpy("output"), atol=1e-6)
    assert list(from_memory.argmax(axis=1)) == [1, 0, 1], "xo's labels are O, X"


def test_outputs_are_written_to_shared_memory_and_not_sent(client, region_of) -> None:
    pictures = xo_input(render_o(), render_x())
    inputs = region_of(len(pictures) * XO_IMAGE_BYTES)
    inputs.write(pictures)
    outputs = region_of(64)
    result = client.infer("xo", [input_in(inputs, 2)], outputs=[output_in(outputs, 2 * 2 * FLOAT, offset=16)])
    response = result.get_response()
    assert not response.raw_output_contents, "the probabilities stay in shared memory"
    assert list(response.outputs[0].shape) == [2, 2]
    probabilities = outputs.read([2, 2], offset=16)
    assert list(probabilities.argmax(axis=1)) == [0, 1]
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)


def test_an_input_at_an_offset_inside_a_larger_region(client, region_of) -> None:
    region = region_of(3 * XO_IMAGE_BYTES)
    region.write(xo_input(render_x(), render_o(), render_x(shift=(1.0, 0.0))))
    second = client.infer("xo", [input_in(region, 1, offset=XO_IMAGE_BYTES)]).as_numpy("output")
    assert second.argmax() == 0, "the second picture is the O"


@pytest.mark.parametrize(
    ("mistake", "status", "words"),
    [
        ("unknown region", "NOT_FOUND", "unable to find system shared memory region"),
        ("beyond the region", "INVALID_ARGUMENT", "invalid offset + byte size"),
        ("wrong byte size", "INVALID_ARGUMENT", "unexpected shared memory byte size"),
        ("also raw bytes", "INVALID_ARGUMENT", "do not also send it"),
        ("output too small", "INVALID_ARGUMENT", "should be at least 8 bytes"),
    ],
)
def test_requests_that_point_to_the_wrong_place_are_refused(client, region_of, mistake, status, words) -> None:
    region = region_of(XO_IMAGE_BYTES)
    region.write(xo_input(render_x()))
    tensor = input_in(region, 1)
    outputs = None
    if mistake == "unknown region":
        tensor.set_shared_memory("no-such-region", XO_IMAGE_BYTES)
    elif mistake == "beyond the region":
        tensor = input_in(region, 1, offset=FLOAT)
    elif mistake == "wrong byte size":
        tensor = input_in(region, 1, byte_size=XO_IMAGE_BYTES - FLOAT)
    elif mistake == "also raw bytes":
        tensor._raw_content = xo_input(render_x()).tobytes()  # what set_data_from_numpy would add
    elif mistake == "output too small":
        outputs = [output_in(region_of(64), 4)]
    error = failure(lambda: client.infer("xo", [tensor], outputs=outputs))
    assert error.status() == f"StatusCode.{status}"
    assert words in error.message()
    assert client.infer("xo", [input_in(region, 1)]).as_numpy("output").argmax() == 1, "the server still serves"


def test_registering_what_cannot_be_mapped_is_refused(client, region_of) -> None:
    region = region_of(XO_IMAGE_BYTES, register=False)
    cases = {
        "a key that leaves /dev/shm": (
            region.name,
            "/../etc/passwd",
            16,
            "INVALID_ARGUMENT",
            "invalid shared memory key",
        ),
        "no such object": (region.name, "/cnnserve_no_such_object", 16, "INVALID_ARGUMENT", "no shared memory object"),
        "more than the object holds": (region.name, region.key, 2 * XO_IMAGE_BYTES, "INVALID_ARGUMENT", "holds"),
    }
    for case, (name, key, size, status, words) in cases.items():
        error = failure(lambda name=name, key=key, size=size: client.register_system_shared_memory(name, key, size))
        assert (error.status(), words in error.message()) == (f"StatusCode.{status}", True), case
    client.register_system_shared_memory(region.name, region.key, XO_IMAGE_BYTES)
    twice = failure(lambda: client.register_system_shared_memory(region.name, region.key, XO_IMAGE_BYTES))
    assert twice.status() == "StatusCode.ALREADY_EXISTS"


def test_a_region_unregistered_while_mapped_elsewhere_leaves_the_object_to_its_owner(client, region_of) -> None:
    region = region_of(XO_IMAGE_BYTES)
    region.write(xo_input(render_o()))
    assert client.infer("xo", [input_in(region, 1)]).as_numpy("output").argmax() == 0
    client.unregister_system_shared_memory(region.name)
    assert Path("/dev/shm", region.key.lstrip("/")).exists(), "the server never removes the client's object"
    assert failure(lambda: client.infer("xo", [input_in(region, 1)])).status() == "StatusCode.NOT_FOUND"
    client.unregister_system_shared_memory(region.name)  # unknown names are fine, as in Triton


def test_a_server_with_shared_memory_off_says_so(model_repository: Path, tmp_path: Path) -> None:
    key = f"/cnnserve_test_{os.getpid()}_off"
    handle = shm.create_shared_memory_region("off", key, XO_IMAGE_BYTES)
    try:
        with (
            running_server(model_repository, "--no-allow-shared-memory", workdir=tmp_path) as server,
            triton.InferenceServerClient(server.target) as client,
        ):
            assert "system_shared_memory" not in client.get_server_metadata().extensions
            error = failure(lambda: client.register_system_shared_memory("off", key, XO_IMAGE_BYTES))
    finally:
        shm.destroy_shared_memory_region(handle)
    assert error.status() == "StatusCode.UNIMPLEMENTED"
    assert "--no-allow-shared-memory" in error.message()
