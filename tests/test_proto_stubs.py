"""The committed protobuf modules are what the .proto files generate today."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parents[1]


def load_generator():
    spec = importlib.util.spec_from_file_location("proto_generate", REPOSITORY / "proto" / "generate.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_committed_stubs_match_the_proto_files(tmp_path: Path) -> None:
    load_generator().generate(tmp_path)
    generated = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*.py*"))
    assert generated, "the generator produced nothing"
    stale = [str(p) for p in generated if (REPOSITORY / p).read_text() != (tmp_path / p).read_text()]
    assert not stale, f"stale generated modules (run `make proto`): {stale}"
