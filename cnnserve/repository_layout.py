"""The model repository on disk: the layout `export` writes and the server reads.

    <root>/<name>/<version>/model.onnx

A model name is one safe path component: letters, digits, ``_``, ``.`` and ``-``, starting with a letter or a
digit. Versions are integer-named folders; a version exists for the server once its folder holds the model
file. A folder without the file still takes its number, because an export reserves the next number by
creating the folder before it moves the model in. This module is the single owner of these rules and imports
nothing but the standard library.
"""

from __future__ import annotations

import re
from pathlib import Path

MODEL_FILE = "model.onnx"
"""The one file of a version folder."""

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def is_model_name(name: str) -> bool:
    """Whether `name` may name a model (and so a folder of the repository)."""
    return _NAME.match(name) is not None


def check_model_name(name: str) -> None:
    """Raises ValueError when `name` may not name a model."""
    if not is_model_name(name):
        raise ValueError(f"model name {name!r} must be letters, digits, '_', '.' or '-'")


def model_versions(model_dir: Path) -> dict[int, Path]:
    """Version -> folder, for every integer-named folder of `model_dir` that holds the model file."""
    if not model_dir.is_dir():
        return {}
    return {
        int(v.name): v for v in model_dir.iterdir() if v.is_dir() and v.name.isdigit() and (v / MODEL_FILE).is_file()
    }


def newest_model_file(model_dir: Path) -> Path | None:
    """The model file of the highest version in `model_dir`, or None when it has none."""
    versions = model_versions(model_dir)
    return versions[max(versions)] / MODEL_FILE if versions else None


def next_version(model_dir: Path) -> int:
    """One past the highest integer-named folder of `model_dir`, with or without a model file in it yet."""
    if not model_dir.is_dir():
        return 1
    return max((int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit()), default=0) + 1
