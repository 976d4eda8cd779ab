"""The model repository layout the server reads: ``<root>/<name>/<version>/model.onnx``.

Versions are integers from 1. Adding a model never overwrites: the file is written into a hidden staging
folder first and then renamed to the next free version, so the server never sees a half-written model and two
concurrent exports get different versions.
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

MODEL_FILE = "model.onnx"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def versions(root: Path, name: str) -> list[int]:
    """Existing version numbers of ``name``, ascending."""
    folder = root / name
    if not folder.is_dir():
        return []
    return sorted(int(p.name) for p in folder.iterdir() if p.is_dir() and p.name.isdigit())


def add_version(root: Path, name: str, model_bytes: bytes, extra_files: dict[str, bytes] | None = None) -> Path:
    """Store ``model_bytes`` as the next version of ``name``; returns the new version folder."""
    if not _NAME.match(name):
        raise ValueError(f"model name {name!r} must be letters, digits, '_', '.' or '-'")
    folder = root / name
    folder.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=folder))
    (staging / MODEL_FILE).write_bytes(model_bytes)
    for file_name, content in (extra_files or {}).items():
        (staging / file_name).write_bytes(content)
    while True:
        target = folder / str(max(versions(root, name), default=0) + 1)
        try:
            target.mkdir()
        except FileExistsError:
            continue
        os.replace(staging, target)
        return target
