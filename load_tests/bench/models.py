"""The models a benchmark serves: taken from a repository, or exported with random weights.

Speed does not depend on what a network has learnt, so a model that is not in the given repository is exported
untrained by `cnnserve.export` (its real architecture, preprocessing and labels; random weights), once, into a
cache folder that later runs reuse. Each model is then served from a repository of its own (a folder holding a
link to the model's folder of versions), so a server under test loads nothing else.
"""

from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass
from pathlib import Path

from cnnserve.repository_layout import MODEL_FILE, newest_model_file

_log = logging.getLogger(__name__)
DEFAULT_CACHE = Path("load_tests/results/models")
"""Where models exported with random weights are kept between runs."""
RANDOM_WEIGHTS = "random"
AS_FOUND = "as found"


@dataclass(frozen=True)
class PreparedModel:
    name: str
    model_path: Path
    """The newest version's model file."""
    weights: str
    """RANDOM_WEIGHTS or AS_FOUND."""


def prepare_model(name: str, cache: Path, repository: Path | None = None) -> PreparedModel:
    """The model `name` from `repository` if it is there, else from `cache`, exporting it there first if needed.

    Raises RuntimeError when the model must be exported and the `train` extra (torch) is not installed.
    """
    if repository is not None:
        found = newest_model_file(repository / name)
        if found is not None:
            return PreparedModel(name, found, AS_FOUND)
    cached = newest_model_file(cache / name)
    if cached is None:
        cached = _export_untrained(name, cache)
    return PreparedModel(name, cached, RANDOM_WEIGHTS)


def _export_untrained(name: str, cache: Path) -> Path:
    try:
        from cnnserve.export.catalog import get_spec
        from cnnserve.export.onnx_export import export_to_onnx
        from cnnserve.export.pipeline import model_metadata
        from cnnserve.export.repository import add_version
    except ImportError as exc:
        raise RuntimeError(
            f"{name} is not in --model-repository and exporting it needs the train extra "
            f"(pip install 'cnnserve[train]'): {exc}"
        ) from exc
    import torch

    spec = get_spec(name)
    torch.manual_seed(0)
    network = spec.create()
    metadata = model_metadata(spec, spec.labels, {"weights": "random, exported by cnnserve bench; not trained"})
    _log.info("exporting %s with random weights into %s", name, cache)
    version_dir = add_version(cache, name, export_to_onnx(network, metadata).SerializeToString())
    return version_dir / MODEL_FILE


def single_model_repository(model: PreparedModel, root: Path) -> Path:
    """A repository under `root` holding only `model` (a link to its folder of versions); returns it."""
    repository = root / model.name
    repository.mkdir(parents=True, exist_ok=True)
    link = repository / model.name
    if link.is_symlink() or link.exists():
        link.unlink()
    link.symlink_to(model.model_path.parent.parent.resolve(), target_is_directory=True)
    return repository


def add_model_options(parser: argparse.ArgumentParser, model: str) -> None:
    """`--model-repository` and `--cache-dir`, as every benchmark that serves one model (`model`, as its help
    names it) takes them; `model_from_options` reads them back."""
    parser.add_argument("--model-repository", type=Path, help=f"holding {model} (else exported with random weights)")
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE)


def model_from_options(name: str, args: argparse.Namespace) -> PreparedModel:
    """The model `name` as `add_model_options`' options say (see `prepare_model`)."""
    return prepare_model(name, args.cache_dir, args.model_repository)
