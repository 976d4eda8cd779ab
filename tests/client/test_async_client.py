"""The asyncio client against a real server: the same calls as the blocking one, awaited."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cnnserve.client import AsyncClient, HealthStatus, ImageError, InvalidInput, ModelNotFound
from cnnserve.export import render_o, render_x
from tests.client.conftest import ScriptedServer
from tests.conftest import png_bytes
from tests.servers import ServerProcess


@pytest.fixture
async def client(server: ServerProcess) -> AsyncIterator[AsyncClient]:
    async with AsyncClient(server.target) as client:
        yield client


async def test_classify_takes_every_kind_of_image(client: AsyncClient, tmp_path: Path) -> None:
    path = tmp_path / "x.png"
    path.write_bytes(png_bytes(render_x()))
    images = [path, str(path), png_bytes(render_o()), Image.fromarray(render_x()), render_o()]
    results = await client.classify(images, model="xo", top_k=2)
    assert [r.label for r in results] == ["X", "X", "O", "X", "O"]
    assert all(len(r.predictions) == 2 for r in results)


async def test_models_model_and_health(client: AsyncClient) -> None:
    assert {m.name for m in await client.models()} == {"mnist_net", "xo"}
    assert (await client.model("xo")).labels == ("O", "X")
    assert await client.health() is HealthStatus.SERVING
    with pytest.raises(ModelNotFound):
        await client.model("nope")


async def test_errors_are_the_same_as_the_blocking_clients(client: AsyncClient, tmp_path: Path) -> None:
    with pytest.raises(InvalidInput):
        await client.classify([render_x(), b"junk"], model="xo")
    with pytest.raises(ImageError):
        await client.classify([tmp_path / "missing.png"], model="xo")


async def test_classify_many_keeps_input_order_and_reports_failures(client: AsyncClient, tmp_path: Path) -> None:
    images: list[object] = []
    expected: list[str | None] = []
    for number in range(30):
        if number % 5 == 2:
            images.append(b"junk" if number % 2 else tmp_path / f"missing-{number}.png")
            expected.append(None)
        else:
            images.append(render_x() if number % 2 else render_o())
            expected.append("X" if number % 2 else "O")
    outcomes = [o async for o in client.classify_many(images, model="xo", batch_size=4, concurrency=3)]
    assert [o.position for o in outcomes] == list(range(30))
    assert [o.classification.label if o.ok else None for o in outcomes] == expected


async def test_classify_many_takes_an_async_iterable(client: AsyncClient) -> None:
    async def images() -> AsyncIterator[np.ndarray]:
        for number in range(7):
            yield render_x() if number % 2 else render_o()

    labels = [o.classification.label async for o in client.classify_many(images(), model="xo", batch_size=3)]
    assert labels == ["O", "X", "O", "X", "O", "X", "O"]


async def test_classify_many_stays_within_concurrency(scripted: ScriptedServer) -> None:
    scripted.classifier.gather, scripted.classifier.expected_calls = 2, 6
    async with AsyncClient(scripted.target) as client:
        outcomes = [o async for o in client.classify_many([render_x()] * 12, model="m", batch_size=2, concurrency=2)]
    assert len(outcomes) == 12 and all(o.ok for o in outcomes)
    assert scripted.classifier.most_in_flight == 2


async def test_stopping_early_cancels_what_is_in_flight(client: AsyncClient) -> None:
    async with contextlib.aclosing(client.classify_many([render_x()] * 100, model="xo", batch_size=5)) as outcomes:
        async for outcome in outcomes:
            assert outcome.ok
            break
    assert await client.health() is HealthStatus.SERVING, "the client is still usable"
