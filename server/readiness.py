"""When the server is ready: one policy, read by gRPC health, the REST health paths and the metrics.

Strict by default, like Triton: ready once every model of the repository has a READY version, so a replica with a
model that failed to load takes no traffic. An operator who would rather serve what did load names the models
that must be ready (`required_models`); the others may fail without holding the replica back (their failure is
counted in `cnnserve_model_load_failures_total` and alerted on). Never ready again once shutdown began.
"""

from __future__ import annotations

from collections.abc import Sequence

from cnnserve.server.repository import ServedVersions


class Readiness:
    """Readiness of the server and of each model, as every probe answers it.

    Read from the event loop and from the metrics port's thread alike: it only reads the repository's state.
    """

    def __init__(self, repository: ServedVersions, required_models: Sequence[str] = ()) -> None:
        self._repository = repository
        self._required = tuple(required_models)
        self._stopping = False

    def shutting_down(self) -> None:
        """From now on the server is live but never ready."""
        self._stopping = True

    @property
    def live(self) -> bool:
        return True

    @property
    def ready(self) -> bool:
        if self._stopping:
            return False
        if not self._required:
            return self._repository.all_ready
        return all(self.model_ready(name) for name in self._required)

    def model_ready(self, name: str, version: int | None = None) -> bool | None:
        """Whether `name` (that `version`, or any) is READY; None when the server does not know it."""
        versions = [v for v in self._repository.versions(name) if version is None or v.version == version]
        if not versions:
            return None
        return not self._stopping and any(version.ready for version in versions)

    def missing(self) -> list[str]:
        """The models that keep the server from being ready (empty when it is ready or shutting down)."""
        if self._stopping:
            return []
        names = self._required or tuple(self._repository.names())
        return [name for name in names if not self.model_ready(name)]
