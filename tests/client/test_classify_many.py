"""classify_many: a large mixed stream through a real server, in input order, failures reported per image."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from cnnserve.client import Client, ImageError, InvalidInput, ModelNotFound
from cnnserve.export import render_o, render_x
from tests.client.conftest import ScriptedServer
from tests.conftest import png_bytes


def image_folder(folder: Path, count: int) -> tuple[list[Path], list[str | None]]:
    """`count` files: X and O images, with a broken file (not a PNG) and an empty file here and there. Returns the
    paths and what each should be classified as (None for the broken ones)."""
    folder.mkdir()
    expected: list[str | None] = []
    for number in range(count):
        path = folder / f"{number:04d}.png"
        if number % 7 == 3:
            path.write_bytes(b"this is not a PNG file")
            expected.append(None)
        elif number % 11 == 5:
            path.write_bytes(b"")
            expected.append(None)
        else:
            label = "X" if number % 2 else "O"
            path.write_bytes(png_bytes(render_x() if label == "X" else render_o()))
            expected.append(label)
    return paths_in(folder), expected


def paths_in(folder: Path) -> list[Path]:
    return sorted(folder.iterdir())


def test_outcomes_come_in_input_order_with_failures_reported_per_image(client: Client, tmp_path: Path) -> None:
    paths, expected = image_folder(tmp_path / "images", 60)
    paths.insert(10, tmp_path / "images" / "missing.png")
    expected.insert(10, None)

    outcomes = list(client.classify_many(paths, model="xo", batch_size=4, concurrency=3))

    assert [o.position for o in outcomes] == list(range(len(paths)))
    assert [o.source for o in outcomes] == paths
    assert [o.classification.label if o.ok else None for o in outcomes] == expected
    for outcome in outcomes:
        assert (outcome.classification is None) != (outcome.error is None)
    errors = {type(o.error) for o in outcomes if not o.ok}
    assert errors == {ImageError, InvalidInput}, "missing file fails on the client, broken ones on the server"
    assert isinstance(outcomes[10].error, ImageError) and "missing.png" in str(outcomes[10].error)


def test_arrays_and_bytes_mix_in_one_stream(client: Client) -> None:
    images = [render_x(), png_bytes(render_o()), np.zeros((9, 9), np.float64), render_o()]
    outcomes = list(client.classify_many(images, model="xo", batch_size=2))
    assert [o.classification.label if o.ok else type(o.error) for o in outcomes] == ["X", "O", ImageError, "O"]


def test_the_stream_is_drawn_lazily(client: Client) -> None:
    drawn: list[int] = []

    def images() -> Iterator[np.ndarray]:
        for number in itertools.count():
            drawn.append(number)
            yield render_x()

    outcomes = client.classify_many(images(), model="xo", batch_size=5, concurrency=2)
    first = list(itertools.islice(outcomes, 3))
    outcomes.close()
    assert [o.classification.label for o in first] == ["X", "X", "X"]
    assert len(drawn) == 5 * 2, "`concurrency` batches of `batch_size` are drawn ahead, no more"


def test_an_error_that_is_not_the_images_fails_every_image_but_does_not_raise(client: Client) -> None:
    outcomes = list(client.classify_many([render_x()] * 5, model="nope", batch_size=2))
    assert len(outcomes) == 5
    assert all(isinstance(o.error, ModelNotFound) for o in outcomes)


def test_requests_carry_batch_size_images_and_stay_within_concurrency(scripted: ScriptedServer) -> None:
    batches, batch_size, concurrency = 9, 4, 3
    scripted.classifier.gather = concurrency
    scripted.classifier.expected_calls = batches
    with Client(scripted.target) as client:
        outcomes = list(
            client.classify_many(
                [render_x()] * (batches * batch_size - 1), model="m", batch_size=batch_size, concurrency=concurrency
            )
        )
    assert len(outcomes) == batches * batch_size - 1 and all(o.ok for o in outcomes)
    assert sorted(scripted.classifier.images_seen) == [batch_size - 1] + [batch_size] * (batches - 1)
    assert scripted.classifier.most_in_flight == concurrency, "requests overlap, but never more than asked"


def test_bad_arguments_fail_at_the_call(client: Client) -> None:
    with pytest.raises(ValueError, match="concurrency"):
        client.classify_many([render_x()], model="xo", concurrency=0)
    with pytest.raises(ValueError, match="batch_size"):
        client.classify_many([render_x()], model="xo", batch_size=0)
