"""Adding a model to the repository (layout and naming: `cnnserve.repository_layout`).

Adding a model never overwrites: the file is written into a hidden staging folder first and then renamed to
the next free version, so the server never sees a half-written model and two concurrent exports get different
versions.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from cnnserve.repository_layout import MODEL_FILE, check_model_name, next_version


def add_version(root: Path, name: str, model_bytes: bytes, extra_files: dict[str, bytes] | None = None) -> Path:
    """Store ``model_bytes`` as the next version of ``name``; returns the new version folder.

    Raises ValueError when ``name`` may not name a model.
    """
    check_model_name(name)
    folder = root / name
    folder.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=folder))
    (staging / MODEL_FILE).write_bytes(model_bytes)
    for file_name, content in (extra_files or {}).items():
        (staging / file_name).write_bytes(content)
    while True:
        target = folder / str(next_version(folder))
        try:
            target.mkdir()
        except FileExistsError:
            continue
        os.replace(staging, target)
        return target
