"""Training and ONNX export of the seed CNNs (needs the ``train`` extra: torch, onnx, scikit-learn).

Importing this package stays light; the heavy functions below import torch on first use. Other packages'
tests build a real model repository with `build_model` and make image payloads with `generate_xo`,
`render_x`, `render_o` and `load_digit_images`.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from .catalog import MODEL_NAMES, MODEL_SPECS, ModelSpec, get_spec
from .digits_data import DIGIT_LABELS, load_digit_images
from .xo_data import XO_LABELS, XOVariation, generate_xo, render_o, render_x

if TYPE_CHECKING:
    from .pipeline import RunOutcome, TrainSettings

__all__ = [
    "DIGIT_LABELS",
    "MODEL_NAMES",
    "MODEL_SPECS",
    "XO_LABELS",
    "ModelSpec",
    "XOVariation",
    "build_model",
    "export_checkpoint",
    "generate_xo",
    "get_spec",
    "load_digit_images",
    "render_o",
    "render_x",
    "train_and_export",
]


def build_model(
    name: str,
    out_dir: Path | str,
    *,
    epochs: int | None = None,
    seed: int = 1,
    data_dir: Path | str | None = None,
    run_dir: Path | str | None = None,
    activations: bool = False,
) -> Path:
    """Train ``name`` on its offline data, export it, and return its new model file (``<out_dir>/<name>/<v>/``).

    See `cnnserve.export.pipeline.build_model`.
    """
    from .pipeline import build_model as _build_model

    return _build_model(
        name, out_dir, epochs=epochs, seed=seed, data_dir=data_dir, run_dir=run_dir, activations=activations
    )


def train_and_export(settings: TrainSettings) -> RunOutcome:
    from .pipeline import train_and_export as _train_and_export

    return _train_and_export(settings)


def export_checkpoint(checkpoint: Path, out_dir: Path, **options) -> RunOutcome:
    from .pipeline import export_checkpoint as _export_checkpoint

    return _export_checkpoint(checkpoint, out_dir, **options)
