"""Load balancing over two real server processes: round robin spreads calls over both, pick_first does not.

A dns:/// name resolves to one port, so two replicas on one host are named with an ipv4: target listing both;
a headless Kubernetes service gives the same list of addresses through dns:///.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from cnnserve.client import Client, HealthStatus
from cnnserve.export import render_o, render_x
from tests.servers import ServerProcess, running_server

CALLS = 40


@pytest.fixture(scope="module")
def replicas(xo_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[ServerProcess]]:
    with (
        running_server(xo_repository, workdir=tmp_path_factory.mktemp("replica-a")) as first,
        running_server(xo_repository, workdir=tmp_path_factory.mktemp("replica-b")) as second,
    ):
        yield [first, second]


def request_counts(replicas: list[ServerProcess]) -> list[int]:
    """Successful Classify calls of `xo`, as each replica counts them."""
    counts = []
    for replica in replicas:
        with Client(replica.target) as client:
            counts.append(client.model("xo").versions[0].statistics.request_count)
    return counts


def both(replicas: list[ServerProcess]) -> str:
    return "ipv4:" + ",".join(replica.target for replica in replicas)


def test_round_robin_spreads_calls_over_every_replica(replicas: list[ServerProcess]) -> None:
    before = request_counts(replicas)
    with Client(both(replicas)) as client:
        for number in range(CALLS):
            assert client.classify([render_x() if number % 2 else render_o()], model="xo")[0].label in "XO"
    served = [after - earlier for after, earlier in zip(request_counts(replicas), before, strict=True)]
    assert sum(served) == CALLS
    assert all(count > 0 for count in served), f"every replica served some calls: {served}"


def test_classify_many_is_spread_too(replicas: list[ServerProcess]) -> None:
    before = request_counts(replicas)
    with Client(both(replicas)) as client:
        outcomes = list(client.classify_many([render_x()] * 64, model="xo", batch_size=2, concurrency=4))
    assert all(o.ok for o in outcomes)
    served = [after - earlier for after, earlier in zip(request_counts(replicas), before, strict=True)]
    assert sum(served) == 32 and all(count > 0 for count in served), served


def test_pick_first_sends_every_call_to_one_replica(replicas: list[ServerProcess]) -> None:
    before = request_counts(replicas)
    with Client(both(replicas), load_balancing="pick_first") as client:
        for _ in range(10):
            client.classify([render_x()], model="xo")
    served = [after - earlier for after, earlier in zip(request_counts(replicas), before, strict=True)]
    assert sorted(served) == [0, 10], served


def test_a_dns_target_resolves_and_connects(replicas: list[ServerProcess]) -> None:
    with Client(f"dns:///localhost:{replicas[0].grpc_port}") as client:
        assert client.health() is HealthStatus.SERVING
