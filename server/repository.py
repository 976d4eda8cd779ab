"""The model repository: which models exist on disk, which versions are loaded, and lookup by name.

Layout: ``<root>/<name>/<version>/model.onnx`` with integer versions. The newest version of each model is
loaded. A version that fails to load is kept, FAILED with its reason, so GetModel can say why.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Iterator
from pathlib import Path

from cnnserve.server.errors import ModelNotFoundError, UnavailableError
from cnnserve.server.metrics import ServerMetrics
from cnnserve.server.model import ModelVersion
from cnnserve.server.runtime import SessionOptions
from cnnserve.server.settings import ServerSettings

_log = logging.getLogger(__name__)
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def discover_versions(root: Path) -> dict[str, list[tuple[int, Path]]]:
    """Model name -> [(version, folder)] ascending, for every folder that holds a model.onnx."""
    found: dict[str, list[tuple[int, Path]]] = {}
    for model_dir in sorted(p for p in root.iterdir() if p.is_dir() and _NAME.match(p.name)):
        versions = [
            (int(v.name), v)
            for v in model_dir.iterdir()
            if v.is_dir() and v.name.isdigit() and (v / "model.onnx").is_file()
        ]
        if versions:
            found[model_dir.name] = sorted(versions)
        else:
            _log.warning("%s has no <version>/model.onnx; skipped", model_dir)
    return found


class ModelRepository:
    """Loads the models under one folder and finds the version a request asks for."""

    def __init__(self, settings: ServerSettings, metrics: ServerMetrics) -> None:
        self._settings = settings
        self._metrics = metrics
        self._models: dict[str, dict[int, ModelVersion]] = {}
        self._session_options = SessionOptions(
            provider=settings.execution_provider, intra_op_threads=settings.intra_op_threads
        )
        metrics.watch_queues(self._queue_depths)

    async def load_all(self) -> None:
        """Load the newest version of every model, concurrently; returns when each is READY or FAILED."""
        discovered = discover_versions(self._settings.model_repository)
        if not discovered:
            _log.warning("no models found under %s", self._settings.model_repository)
        versions = []
        for name, found in discovered.items():
            number, path = found[-1]
            version = ModelVersion(name=name, version=number, path=path)
            self._models.setdefault(name, {})[number] = version
            versions.append(version)
        await asyncio.gather(*(v.load(self._session_options, self._settings.batching, self._metrics) for v in versions))

    @property
    def all_ready(self) -> bool:
        return all(v.ready for v in self.versions())

    def names(self) -> list[str]:
        return sorted(self._models)

    def versions(self, name: str | None = None) -> Iterator[ModelVersion]:
        names = [name] if name is not None else self.names()
        for model_name in names:
            yield from sorted(self._models.get(model_name, {}).values(), key=lambda v: -v.version)

    def get(self, name: str, version: int = 0) -> ModelVersion:
        """The version to serve: `version`, or the newest ready one when 0.

        Raises ModelNotFoundError for an unknown name or version, UnavailableError when it is not ready.
        """
        by_version = self._models.get(name)
        if by_version is None:
            known = ", ".join(self.names()) or "none"
            raise ModelNotFoundError(f"unknown model {name!r}; the models served here are: {known}")
        if version:
            found = by_version.get(version)
            if found is None:
                raise ModelNotFoundError(
                    f"model {name!r} has no version {version}; loaded versions: {sorted(by_version)}"
                )
            if not found.ready:
                raise UnavailableError(f"model {name!r} version {version} is {found.state.value}: {found.reason}")
            return found
        for candidate in self.versions(name):
            if candidate.ready:
                return candidate
        raise UnavailableError(f"model {name!r} has no ready version")

    async def close(self, drain_seconds: float) -> None:
        await asyncio.gather(*(v.unload(drain_seconds) for v in self.versions()))
        for v in self.versions():
            self._metrics.model_unloaded(v)

    def _queue_depths(self) -> Iterator[tuple[str, str, int]]:
        for v in self.versions():
            if v.batcher is not None:
                yield v.name, str(v.version), v.batcher.queued_rows
