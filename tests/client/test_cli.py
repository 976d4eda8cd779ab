"""`cnnserve classify`, `cnnserve models` and `cnnserve health` against a real server, through `cnnserve.cli.main`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from cnnserve.cli import main
from cnnserve.export import render_o, render_x
from tests.client.conftest import ScriptedServer
from tests.conftest import jpeg_bytes, png_bytes
from tests.servers import ServerProcess

Capture = pytest.CaptureFixture[str]


@pytest.fixture
def images(tmp_path: Path) -> Path:
    """A folder tree: 4 X's and 3 O's, nested, one JPEG, a text file that is not picked up, and a hidden folder."""
    root = tmp_path / "images"
    (root / "nested" / "deeper").mkdir(parents=True)
    (root / ".cache").mkdir()
    for number in range(4):
        (root / f"x{number}.png").write_bytes(png_bytes(render_x()))
    (root / "nested" / "o0.png").write_bytes(png_bytes(render_o()))
    (root / "nested" / "deeper" / "o1.PNG").write_bytes(png_bytes(render_o()))
    (root / "nested" / "o2.jpg").write_bytes(jpeg_bytes(render_o().repeat(4, 0).repeat(4, 1)))
    (root / "notes.txt").write_text("not an image")
    (root / ".cache" / "x.png").write_bytes(png_bytes(render_x()))
    return root


def classify(server: ServerProcess, *args: str) -> int:
    return main(["classify", "--server", server.target, "--model", "xo", *args])


def test_classify_prints_a_line_per_image_and_a_summary(server: ServerProcess, images: Path, capsys: Capture) -> None:
    assert classify(server, str(images)) == 0
    out = capsys.readouterr().out.splitlines()
    assert sum(": X " in line for line in out) == 4 and sum(": O " in line for line in out) == 3
    assert not any(".cache" in line for line in out), "hidden folders are skipped"
    assert any(line.split()[:2] == ["X", "4"] for line in out) and any(line.split()[:2] == ["O", "3"] for line in out)
    assert out[-1].startswith("7 of 7 images classified")


def test_classify_json_gives_one_object_per_image_in_path_order(
    server: ServerProcess, images: Path, capsys: Capture
) -> None:
    assert classify(server, "--json", "--top-k", "2", str(images / "nested"), str(images / "x0.png")) == 0
    captured = capsys.readouterr()
    lines = [json.loads(line) for line in captured.out.splitlines()]
    assert [Path(line["path"]).name for line in lines] == ["o1.PNG", "o0.png", "o2.jpg", "x0.png"]
    assert [line["label"] for line in lines] == ["O", "O", "O", "X"]
    assert all(len(line["predictions"]) == 2 and line["model"] == "xo" for line in lines)
    assert "4 of 4 images classified" in captured.err, "with --json the summary goes to stderr"


def test_broken_images_are_reported_and_exit_1(server: ServerProcess, images: Path, capsys: Capture) -> None:
    (images / "broken.png").write_bytes(b"not a png")
    assert classify(server, "--json", str(images), str(images / "missing.png")) == 1
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    errors = {Path(line["path"]).name: line["error"]["code"] for line in lines if "error" in line}
    assert errors == {"broken.png": "INVALID_ARGUMENT", "missing.png": "IMAGE_ERROR"}
    assert sum("label" in line for line in lines) == 7


def test_an_unknown_model_exits_3_before_sending_images(server: ServerProcess, images: Path, capsys: Capture) -> None:
    assert main(["classify", "--server", server.target, "--model", "nope", str(images)]) == 3
    assert "nope" in capsys.readouterr().err


def test_an_unreachable_server_exits_3(unused_port: int, images: Path, capsys: Capture) -> None:
    argv = ["classify", "--server", f"127.0.0.1:{unused_port}", "--model", "xo", "--timeout", "5", str(images)]
    assert main(argv) == 3
    assert "UNAVAILABLE" in capsys.readouterr().err


def test_no_images_and_bad_flags_are_usage_errors(server: ServerProcess, tmp_path: Path, capsys: Capture) -> None:
    assert classify(server, str(tmp_path)) == 2
    assert "no PNG or JPEG images" in capsys.readouterr().err
    png = tmp_path / "x.png"
    png.write_bytes(png_bytes(render_x()))
    assert classify(server, "--top-k", "3", str(png)) == 2
    assert "only 2 labels" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        main(["classify", "--model", "xo", "--top-k", "0", str(png)])
    assert exit_.value.code == 2


def test_server_side_failures_of_images_exit_3(scripted: ScriptedServer, images: Path, capsys: Capture) -> None:
    scripted.classifier.fail_first = 1000
    code = main(["classify", "--server", scripted.target, "--model", "m", "--timeout", "5", str(images)])
    assert code == 3, "the images are fine: the server is the problem"
    assert "UNAVAILABLE" in capsys.readouterr().err


def test_models_lists_every_model(server: ServerProcess, capsys: Capture) -> None:
    assert main(["models", "--server", server.target]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == ["name", "ready", "versions", "input", "labels", "provider"]
    assert [row.split()[:2] for row in table[1:]] == [["mnist_net", "yes"], ["xo", "yes"]]
    assert main(["models", "--server", server.target, "--json"]) == 0
    models = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert {m["name"]: m["labels"] for m in models}["xo"] == ["O", "X"]


def test_health_exit_codes(server: ServerProcess, unused_port: int, capsys: Capture) -> None:
    assert main(["health", "--server", server.target]) == 0
    assert capsys.readouterr().out == "SERVING\n"
    assert main(["health", "--server", server.target, "--service", "no.such.Service"]) == 1
    assert capsys.readouterr().out == "SERVICE_UNKNOWN\n"
    assert main(["health", "--server", f"127.0.0.1:{unused_port}", "--timeout", "5"]) == 3


def test_the_installed_command_runs(server: ServerProcess, images: Path) -> None:
    command = [sys.executable, "-m", "cnnserve", "classify", "--server", server.target, "--model", "xo", "--json"]
    done = subprocess.run(
        [*command, str(images / "x0.png")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["label"] == "X"
    assert "\r" not in done.stderr, "no progress bar when stderr is not a terminal"
