"""The model repository: which models exist on disk, which versions serve, loading, reloading and unloading.

Layout: `cnnserve.repository_layout` (one folder per model, one integer-named folder per version), and an
optional ``<root>/<name>/config.toml`` (server/model_config.py) whose version policy picks the versions to serve
(the newest by default).

Changes are safe while serving: new versions load and warm up beside the old ones, and the old ones are drained
and unloaded only once a new one is READY, so a failed reload keeps the old version serving and no request in
flight is lost. Loads and unloads of one model are serialised by a per-model lock. After each, the retired
versions' memory goes back to the system (server/memory.py): a server that reloads models does not grow.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from cnnserve.repository_layout import MODEL_FILE, is_model_name, model_versions
from cnnserve.server.batcher import InlineWhen
from cnnserve.server.errors import ModelLoadError, ModelLoadFailedError, ModelNotFoundError, UnavailableError
from cnnserve.server.memory import release_freed_memory
from cnnserve.server.metrics import ServerMetrics
from cnnserve.server.model import ModelState, ModelVersion
from cnnserve.server.model_config import CONFIG_FILE_NAME, ModelConfig
from cnnserve.server.settings import ServerSettings
from cnnserve.server.spec_files import LABELS_FILE

_log = logging.getLogger(__name__)

Signature = tuple[tuple[int, str, int, int], ...]
"""What a model looks like on disk: (version, path, mtime_ns, size) per file; model-level files as version -1."""


@dataclass(frozen=True)
class RepositoryEntry:
    """One version on disk or in memory, for the repository index."""

    name: str
    version: int
    state: str
    reason: str


def disk_signature(model_dir: Path) -> Signature:
    """Every file a model's answers depend on, so that a repository poll notices an edit to any of them: each
    version folder's files (the model file and external weights beside it, in subfolders too)
    and the model folder's ``config.toml`` and ``labels.txt``. A file that vanishes while it is read is left
    out; the next poll sees the folder as it then is."""
    entries = []
    for version, folder in sorted(model_versions(model_dir).items()):
        entries += _file_entries(version, folder, sorted(p for p in folder.rglob("*") if p.is_file()))
    entries += _file_entries(-1, model_dir, [model_dir / CONFIG_FILE_NAME, model_dir / LABELS_FILE])
    return tuple(entries)


def _file_entries(version: int, folder: Path, files: list[Path]) -> list[tuple[int, str, int, int]]:
    entries = []
    for path in files:
        try:
            stat = path.stat()
        except FileNotFoundError:
            continue
        entries.append((version, path.relative_to(folder).as_posix(), stat.st_mtime_ns, stat.st_size))
    return entries


class ServedVersions:
    """The versions a process serves, by model name, and how a request finds one.

    The engine's `ModelRepository` fills it by loading models; a front-end process's `RemoteRepository`
    (server/engine_client.py) fills it from the engine's catalog. Both answer requests the same way.
    """

    def __init__(self, settings: ServerSettings) -> None:
        self._settings = settings
        self._root = settings.model_repository
        self._models: dict[str, dict[int, ModelVersion]] = {}
        self._listeners: list[Callable[[], object]] = []

    def on_change(self, listener: Callable[[], object]) -> None:
        """Call `listener` after every load or unload (the server recomputes its readiness)."""
        self._listeners.append(listener)

    def model_names_on_disk(self) -> list[str]:
        return sorted(p.name for p in self._root.iterdir() if p.is_dir() and is_model_name(p.name))

    @property
    def all_ready(self) -> bool:
        """Every model the server holds has a READY version (a model whose only versions failed has none)."""
        return bool(self._models) and all(any(v.ready for v in versions.values()) for versions in self._models.values())

    def names(self) -> list[str]:
        return sorted(self._models)

    def versions(self, name: str | None = None) -> Iterator[ModelVersion]:
        """Versions in memory, newest first; for every model when `name` is None."""
        names = [name] if name is not None else self.names()
        for model_name in names:
            yield from sorted(self._models.get(model_name, {}).values(), key=lambda v: -v.version)

    def version(self, name: str, number: int) -> ModelVersion | None:
        """Version `number` of `name` in memory, whatever its state; None when there is none."""
        return self._models.get(name, {}).get(number)

    def index(self) -> list[RepositoryEntry]:
        """Every version on disk or in memory, with its state ("UNAVAILABLE", "not loaded" for ones on disk only)."""
        entries: dict[tuple[str, int], RepositoryEntry] = {}
        for name in self.model_names_on_disk():
            for number in model_versions(self._root / name):
                entries[(name, number)] = RepositoryEntry(name, number, ModelState.UNAVAILABLE.value, "not loaded")
        for version in self.versions():
            entries[(version.name, version.version)] = RepositoryEntry(
                version.name, version.version, version.state.value, version.reason
            )
        return [entries[key] for key in sorted(entries)]

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
        newest: ModelVersion | None = None
        for candidate in by_version.values():
            if candidate.ready and (newest is None or candidate.version > newest.version):
                newest = candidate
        if newest is None:
            raise UnavailableError(f"model {name!r} has no ready version")
        return newest

    async def load_all(self) -> None:
        """Return once every model of the repository is READY or FAILED."""
        raise NotImplementedError

    async def load(self, name: str) -> None:
        """Load or reload model `name` (ModelNotFoundError, ModelLoadFailedError)."""
        raise NotImplementedError

    async def unload(self, name: str) -> None:
        """Stop serving model `name` once its queued requests finished (ModelNotFoundError)."""
        raise NotImplementedError

    async def close(self, drain_seconds: float) -> None:
        """Stop serving every model, letting queued requests finish for up to `drain_seconds`."""
        raise NotImplementedError

    async def refresh_statistics(self) -> None:
        """Bring the versions' statistics up to date before they are read (they are, in the process that counts)."""

    async def region_registered(self, name: str, key: str, offset: int, byte_size: int) -> None:
        """A client registered a shared memory region here: tell the server's other processes (none here)."""

    async def region_unregistered(self, name: str) -> None:
        """A client unregistered a region here ("" for every one): tell the server's other processes (none here)."""

    def _notify(self) -> None:
        for listener in self._listeners:
            listener()


class ModelRepository(ServedVersions):
    """Loads the models under one folder and finds the version a request asks for."""

    def __init__(self, settings: ServerSettings, metrics: ServerMetrics, inline_when: InlineWhen | None = None) -> None:
        super().__init__(settings)
        self._metrics = metrics
        self._inline_when = inline_when
        """When a quick batch may run on the event loop (see ModelVersion.load); None: never."""
        self._signatures: dict[str, Signature] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    async def load_all(self) -> None:
        """Load every model on disk concurrently; returns when each is READY or FAILED (failures are logged)."""
        names = [name for name in self.model_names_on_disk() if model_versions(self._root / name)]
        if not names:
            _log.warning("no models found under %s", self._root)
        await asyncio.gather(*(self._load_quietly(name) for name in names))

    async def load(self, name: str) -> None:
        """Load `name` from disk, or reload it when its files changed: new versions first, old ones after.

        Raises ModelNotFoundError when the repository has no such model, ModelLoadFailedError when a version
        that should serve failed to load (versions that served before keep serving).
        """
        if not is_model_name(name) or not model_versions(self._root / name):
            raise ModelNotFoundError(
                f"no model {name!r} in the repository {self._root} (expected {name}/<version>/{MODEL_FILE})"
            )
        async with self._lock(name):
            try:
                await self._reconcile(name)
            finally:
                self._notify()
                await release_freed_memory()

    async def unload(self, name: str) -> None:
        """Stop serving `name`: new requests are refused at once, queued ones finish, then it is dropped.

        Raises ModelNotFoundError when it is not loaded.
        """
        async with self._lock(name):
            await self._retire(name)
        self._notify()
        await release_freed_memory()

    async def poll(self, interval: float) -> None:
        """Watch the repository forever: load new or changed models, unload models removed from disk."""
        while True:
            await asyncio.sleep(interval)
            on_disk = {name for name in self.model_names_on_disk() if model_versions(self._root / name)}
            for name in sorted(on_disk):
                if disk_signature(self._root / name) != self._signatures.get(name):
                    await self._load_quietly(name)
            for name in sorted(set(self._models) - on_disk):
                _log.info("model %s disappeared from the repository; unloading", name)
                with contextlib.suppress(ModelNotFoundError):
                    await self.unload(name)

    async def close(self, drain_seconds: float) -> None:
        await self._drain(list(self.versions()), drain_seconds)

    async def _load_quietly(self, name: str) -> None:
        try:
            await self.load(name)
        except (ModelLoadFailedError, ModelNotFoundError) as exc:
            _log.error("%s", exc)

    async def _reconcile(self, name: str) -> None:
        model_dir = self._root / name
        signature = disk_signature(model_dir)
        self._metrics.model_load_started(name)
        try:
            config = ModelConfig.read(model_dir)
        except ModelLoadError as exc:
            self._signatures[name] = signature
            self._metrics.model_load_failed(name)
            if not self._models.get(name):
                self._hold_failed(name, model_dir, str(exc))
            raise ModelLoadFailedError(f"model {name!r} was not (re)loaded: {exc}") from exc
        on_disk = model_versions(model_dir)
        wanted = config.version_policy.select(list(on_disk))
        if not wanted:
            self._signatures[name] = signature
            raise ModelLoadFailedError(f"model {name!r}: its version policy selects none of {sorted(on_disk)}")
        current = self._models.setdefault(name, {})
        changed = signature != self._signatures.get(name)
        fresh = [
            ModelVersion(name=name, version=number, path=on_disk[number])
            for number in wanted
            if changed or number not in current or not current[number].ready
        ]
        await asyncio.gather(*(v.load(config, self._settings, self._metrics, self._inline_when) for v in fresh))
        self._signatures[name] = signature
        failed = [v for v in fresh if not v.ready]
        ready_new = [v for v in fresh if v.ready]
        replaced = [current[v.version] for v in ready_new if v.version in current]
        for version in ready_new:
            current[version.version] = version
        for version in failed:
            if version.version not in current or not current[version.version].ready:
                current[version.version] = version
        if any(v.ready for v in current.values() if v.version in wanted):
            retired = replaced + [v for number, v in list(current.items()) if number not in wanted]
            for version in retired:
                if current.get(version.version) is version:
                    del current[version.version]
            self._notify()
            await self._drain(retired)
        if failed:
            reasons = "; ".join(f"version {v.version}: {v.reason}" for v in failed)
            raise ModelLoadFailedError(
                f"model {name!r} failed to load ({reasons}); versions serving before still serve"
            )

    async def _retire(self, name: str) -> None:
        """`unload`'s work under the model's lock. (A function of its own so that nothing refers to the
        versions once it returns, and `release_freed_memory` can free them.)"""
        versions = self._models.get(name)
        if not versions:
            raise ModelNotFoundError(f"model {name!r} is not loaded")
        for version in versions.values():
            version.state = ModelState.UNAVAILABLE
        self._notify()
        await self._drain(list(versions.values()))
        del self._models[name]
        self._signatures.pop(name, None)
        _log.info("model %s unloaded", name)

    def _hold_failed(self, name: str, model_dir: Path, reason: str) -> None:
        """Hold a model that could not even be configured as its newest version, FAILED with `reason`: GetModel
        and the repository index then say why, and a strict readiness stays off, as for a model whose session
        failed (rather than the model silently missing while the replica reports ready)."""
        on_disk = model_versions(model_dir)
        newest = max(on_disk)
        failed = ModelVersion(name=name, version=newest, path=on_disk[newest])
        failed.state, failed.reason = ModelState.FAILED, reason
        self._models[name] = {newest: failed}

    async def _drain(self, versions: list[ModelVersion], drain_seconds: float | None = None) -> None:
        seconds = self._settings.drain_timeout_seconds if drain_seconds is None else drain_seconds
        await asyncio.gather(*(v.unload(seconds) for v in versions))
        for version in versions:
            serving = self._models.get(version.name, {}).get(version.version)
            if serving is None or serving is version:
                self._metrics.model_unloaded(version)

    def _lock(self, name: str) -> asyncio.Lock:
        return self._locks.setdefault(name, asyncio.Lock())
