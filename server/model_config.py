"""A model's own settings: ``<repository>/<name>/config.toml``, every key optional.

Example::

    max_batch_size = 64
    max_queue_delay_ms = 1.0
    preferred_batch_sizes = [16, 32]
    instances = 2
    execution_provider = "cpu"
    intra_op_threads = 1

    [version_policy]
    latest = 2            # or: specific = [1, 3]   or: all = true

    [input]               # what the model takes, where its graph does not say (server/model_spec.py)
    size = 224
    [preprocessing]       # how pixels become its input: a preset, then the fields named
    preset = "imagenet"
    [output]              # what its output holds
    kind = "logits"

The top-level keys are the server's batching and ONNX Runtime settings, with the same names, units and bounds
(they are declared once, in server/settings.py). What the file sets overrides the server's value; what it omits
comes from the server, and the merged result is checked as a whole, so a config that lowers max_batch_size below
the server's preferred batch sizes fails that model's load with a message. What neither says is derived from the
model itself: a graph whose batch dimension is fixed at N is served with batches of at most N (1: batching off),
and preferred sizes above N are left out for it.

The ``[input]``, ``[preprocessing]`` and ``[output]`` tables specify a model that cnnserve's exporter did not
write (`cnnserve import` writes them, with ``labels.txt`` beside this file), or override what an exported model
embeds; server/model_spec.py declares them and resolves them with what the graph says.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import TypeVar

from pydantic import BaseModel, Field, ValidationError, model_validator

from cnnserve.server.errors import ModelLoadError
from cnnserve.server.settings import BatchingFields, BatchingSettings, RuntimeSettings, ServerSettings
from cnnserve.server.spec_files import CONFIG_FILE_NAME, SpecTables

_View = TypeVar("_View", BatchingSettings, RuntimeSettings)


class VersionPolicy(BaseModel):
    """Which versions of a model are served. Exactly one of the three; the default is the newest one."""

    model_config = {"frozen": True, "extra": "forbid"}

    latest: int | None = Field(None, ge=1)
    specific: tuple[int, ...] | None = None
    all: bool = False

    @model_validator(mode="after")
    def _one_kind(self) -> VersionPolicy:
        chosen = sum([self.latest is not None, self.specific is not None, self.all])
        if chosen > 1:
            raise ValueError("version_policy takes one of latest, specific or all")
        return self

    def select(self, available: list[int]) -> list[int]:
        """The versions to serve out of `available`, ascending."""
        ordered = sorted(available)
        if self.all:
            return ordered
        if self.specific is not None:
            return [v for v in ordered if v in set(self.specific)]
        return ordered[-(self.latest or 1) :]


class ModelConfig(BatchingFields, RuntimeSettings, SpecTables):
    """The contents of a model's config.toml: the per-model settings it sets, its version policy and the model's
    specification tables.

    Only the fields the file sets (`model_fields_set`) count; the others hold the built-in defaults, not the
    server's, so read the settings in force through `batching` and `runtime`, never from the fields.
    """

    version_policy: VersionPolicy = VersionPolicy()

    @classmethod
    def read(cls, model_dir: Path) -> ModelConfig:
        """The model's config.toml, or all defaults when there is none. Raises ModelLoadError when malformed."""
        path = model_dir / CONFIG_FILE_NAME
        if not path.is_file():
            return cls()
        try:
            return cls.model_validate(tomllib.loads(path.read_text()))
        except (tomllib.TOMLDecodeError, ValidationError, UnicodeDecodeError) as exc:
            raise ModelLoadError(f"{path} is not a valid model config: {exc}") from exc

    def batching(self, server: ServerSettings, graph_batch_dim: int | None) -> BatchingSettings:
        """This model's batching settings: the file's over the server's, then capped by the graph.

        `graph_batch_dim` is the graph's declared batch dimension: an int when fixed, None when dynamic. A fixed
        dimension caps max_batch_size at that value and leaves out the preferred sizes above it (a property of
        the model, not a setting to correct). Raises ModelLoadError when the merged settings are inconsistent.
        """
        settings = self._over(server, BatchingSettings)
        if graph_batch_dim is None or graph_batch_dim >= settings.max_batch_size:
            return settings
        fitting = tuple(size for size in settings.preferred_batch_sizes if size <= graph_batch_dim)
        return settings.model_copy(update={"max_batch_size": graph_batch_dim, "preferred_batch_sizes": fitting})

    def runtime(self, server: ServerSettings) -> RuntimeSettings:
        """This model's ONNX Runtime settings: the file's over the server's."""
        return self._over(server, RuntimeSettings)

    def _over(self, server: ServerSettings, view: type[_View]) -> _View:
        """`view` built from the fields this file sets over the server's, and validated as a whole."""
        names = set(view.model_fields)
        values = server.model_dump(include=names) | self.model_dump(include=names & self.model_fields_set)
        try:
            return view.model_validate(values)
        except ValidationError as exc:
            problems = "; ".join(error["msg"] for error in exc.errors())
            raise ModelLoadError(f"the model's {CONFIG_FILE_NAME} over the server's settings: {problems}") from exc
