"""ModelInfer's usual answer is serialized without building the message (server/api/inference_tensors.py,
`probabilities_response`): parsed, it is exactly the message `infer_response` builds, for every row count, id and
payload length (the length's varint takes one to three bytes here).

The comparison runs in a child interpreter: cnnserve's generated inference protos and tritonclient's (which other
tests load into this process) cannot both be loaded into one."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

_CHILD = textwrap.dedent(
    """
    import json

    import numpy as np

    from cnnserve.inference import grpc_service_pb2 as pb
    from cnnserve.server.api.inference_tensors import DEFAULT_OUTPUTS, infer_response, probabilities_response

    LABELS = [f"label {i}" for i in range(10)]
    answers = []
    for rows in (1, 3, 64, 500):
        for request_id in ("", "req-7"):
            for version in (1, 12):
                probabilities = np.random.default_rng(rows).random((rows, 10), dtype=np.float32)
                request = pb.ModelInferRequest(model_name="digits", id=request_id)
                fast = probabilities_response(request, "digits", version, probabilities)
                built = infer_response(request, "digits", version, probabilities, LABELS, DEFAULT_OUTPUTS)
                answers.append({
                    "case": [rows, request_id, version],
                    "same": pb.ModelInferResponse.FromString(fast) == built,
                    "bytes": len(fast),
                })
    print(json.dumps(answers))
    """
)


@pytest.fixture(scope="module")
def answers() -> list[dict]:
    completed = subprocess.run([sys.executable, "-c", _CHILD], capture_output=True, text=True, timeout=60, check=False)
    assert completed.returncode == 0, completed.stderr
    return json.loads(completed.stdout.strip().splitlines()[-1])


def test_the_serialized_answer_parses_to_the_message_infer_response_builds(answers: list[dict]) -> None:
    assert len(answers) == 16
    assert [answer["case"] for answer in answers if not answer["same"]] == []


def test_payloads_of_every_varint_length_were_compared(answers: list[dict]) -> None:
    sizes = {answer["bytes"] for answer in answers}
    assert min(sizes) < 128 and any(128 <= size < 16384 for size in sizes) and max(sizes) >= 16384
