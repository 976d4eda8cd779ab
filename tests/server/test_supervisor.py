"""How the supervisor sizes the engine: ONNX Runtime gets the cores the front-ends leave, unless told otherwise."""

from __future__ import annotations

import os
from pathlib import Path

from cnnserve.server.settings import ServerSettings
from cnnserve.server.supervisor import engine_settings, usable_cpus


def test_usable_cores_never_exceed_the_affinity() -> None:
    assert 1 <= usable_cpus() <= len(os.sched_getaffinity(0))


def test_the_engine_takes_the_cores_the_front_ends_leave(tmp_path: Path) -> None:
    settings = ServerSettings(model_repository=tmp_path)
    sized = engine_settings(settings, frontends=1, port_file=tmp_path / "engine.json")
    assert sized.intra_op_threads == max(1, usable_cpus() - 1)
    assert sized.port_file == tmp_path / "engine.json"
    assert engine_settings(settings, frontends=64, port_file=tmp_path / "e.json").intra_op_threads == 1


def test_threads_set_by_the_operator_are_kept(tmp_path: Path) -> None:
    settings = ServerSettings(model_repository=tmp_path, intra_op_threads=3)
    assert engine_settings(settings, frontends=2, port_file=tmp_path / "engine.json").intra_op_threads == 3
