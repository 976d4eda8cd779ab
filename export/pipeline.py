"""Train, export and evaluate: what `cnnserve train` and `cnnserve export` do, callable from Python.

One run: choose the data, split it, size the network's head to the data's classes, train with the network's
recipe (checkpointing the best validation loss), reload the best checkpoint, export it to ONNX with its
metadata, check ONNX Runtime against PyTorch, add it to the repository as a new version, and write the
evaluation report. Run artefacts (checkpoints, history, plots, report) go to the run folder; the repository's
version folder holds only the model file (`cnnserve.repository_layout`).
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from torch import nn

from cnnserve.metadata import ModelMetadata
from cnnserve.preprocessing import to_model_input
from cnnserve.repository_layout import MODEL_FILE, check_model_name

from .augment import Augmentation
from .catalog import ModelSpec, get_spec
from .checkpoint import load_checkpoint
from .datasets import load_splits
from .objective import Objective
from .onnx_export import INPUT_NAME, OPSET, OUTPUT_NAME, check_parity, embedded_metadata, export_to_onnx, onnx_session
from .quantize import INT8_SUFFIX, compare_int8, quantize_int8
from .recipe import LossName, OptimizerName, TrainingRecipe
from .report import CURVES_FILE, EvaluationReport, confusion_matrix, plot_curves, write_report
from .repository import add_version
from .splits import DataSplits, LabelledImages
from .training import EpochRecord, TensorSet, fit, predict_outputs

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainSettings:
    """One training run. ``None`` means the model's recipe decides."""

    model: str
    """The network: a catalog name (`MODEL_NAMES`)."""
    out_dir: Path
    """Model repository root; the model lands in ``<out_dir>/<name>/<next version>/``."""
    run_dir: Path | None = None
    """Checkpoints, history, plots and report; default ``runs/<name>``."""
    data_dir: Path | None = None
    """IDX files or a folder of class subfolders; default the network's built-in data."""
    name: str | None = None
    """The repository name, also the name in the model's metadata; default ``model``."""
    seed: int = 1
    epochs: int | None = None
    batch_size: int | None = None
    learning_rate: float | None = None
    optimizer: OptimizerName | None = None
    early_stopping_patience: int | None = None
    augment: bool | None = None
    labels: tuple[str, ...] | None = None
    """Class names in class order (Fashion-MNIST's for its IDX files); default the data's own."""
    resume: Path | None = None
    """A ``last.pt`` to continue from."""
    int8: bool = False
    """Also store a dynamic-int8 variant as ``<model>_int8`` and measure it against fp32."""
    activations: bool = False
    """Also output each convolution's feature maps (``activation_conv1``, ...) for the server to draw."""
    threads: int | None = None
    """Torch intra-op threads; default all cores (at most 4: these networks gain nothing beyond)."""

    @property
    def resolved_name(self) -> str:
        return self.name if self.name is not None else self.model

    @property
    def resolved_run_dir(self) -> Path:
        return self.run_dir if self.run_dir is not None else Path("runs") / self.resolved_name


@dataclass(frozen=True)
class RunOutcome:
    model_path: Path
    """The new version's model file, in ``<out_dir>/<name>/<version>/``."""
    report: EvaluationReport

    @property
    def version_dir(self) -> Path:
        return self.model_path.parent


def set_threads(threads: int | None) -> None:
    torch.set_num_threads(threads or max(1, min(os.cpu_count() or 1, 4)))


def resolve_recipe(spec: ModelSpec, settings: TrainSettings, offline_stand_in: bool) -> TrainingRecipe:
    """The spec's recipe with the run's overrides; on the small offline data the stand-in epoch count."""
    recipe = spec.recipe
    if offline_stand_in and spec.offline_epochs:
        recipe = replace(recipe, epochs=spec.offline_epochs)
    overrides = {
        "epochs": settings.epochs,
        "batch_size": settings.batch_size,
        "learning_rate": settings.learning_rate,
        "optimizer": settings.optimizer,
        "early_stopping_patience": settings.early_stopping_patience,
        "augment": settings.augment,
    }
    return replace(recipe, **{k: v for k, v in overrides.items() if v is not None})


def _tensors(data: LabelledImages, spec: ModelSpec) -> TensorSet:
    inputs = torch.from_numpy(to_model_input(data.images, spec.preprocessing))
    return TensorSet(inputs, torch.from_numpy(np.asarray(data.labels, dtype=np.int64)))


def train_and_export(settings: TrainSettings) -> RunOutcome:
    """Run the whole pipeline; raises ValueError for bad settings or data, ParityError if ONNX disagrees."""
    set_threads(settings.threads)
    name = settings.resolved_name
    check_model_name(name)
    network = get_spec(settings.model)
    splits = load_splits(network, settings.data_dir, settings.seed, settings.labels)
    spec = network.with_labels(splits.train.classes)
    recipe = resolve_recipe(spec, settings, offline_stand_in=settings.data_dir is None)
    run_dir = settings.resolved_run_dir
    logger.info(
        "training %s (%s network, %d classes, %s output) on %s: %d train / %d validation / %d test images; %s",
        name,
        spec.name,
        len(spec.labels),
        spec.output_kind,
        splits.source,
        len(splits.train),
        len(splits.validation),
        len(splits.test),
        recipe,
    )
    torch.manual_seed(settings.seed)
    model = spec.create()
    args = {
        "model": spec.name,
        "name": name,
        "seed": settings.seed,
        "data_dir": str(settings.data_dir) if settings.data_dir else None,
        "labels": list(splits.train.classes),
        "recipe": {k: str(v) if isinstance(v, str) else v for k, v in asdict(recipe).items()},
    }
    result = fit(
        model,
        recipe,
        _tensors(splits.train, spec),
        _tensors(splits.validation, spec),
        run_dir,
        seed=settings.seed,
        args=args,
        resume=settings.resume,
        augment=Augmentation() if recipe.augment else None,
    )
    plot_curves(result.history, run_dir / CURVES_FILE, f"{name} ({spec.name}) on {splits.source}")
    best = load_checkpoint(result.best_checkpoint)
    model.load_state_dict(best["model"])
    return export_and_evaluate(
        model,
        spec,
        splits,
        settings.out_dir,
        run_dir,
        training_seconds=sum(r.seconds for r in result.history),
        epochs=len(result.history),
        best_epoch=best["epoch"],
        seed=settings.seed,
        name=name,
        int8=settings.int8,
        activations=settings.activations,
    )


def export_checkpoint(
    checkpoint: Path,
    out_dir: Path,
    *,
    run_dir: Path | None = None,
    data_dir: Path | None = None,
    expected_model: str | None = None,
    name: str | None = None,
    int8: bool = False,
    activations: bool = False,
) -> RunOutcome:
    """Export an existing checkpoint as a new repository version, evaluated on the run's own test split.

    The network, repository name, classes, seed and data folder come from the checkpoint's ``args``;
    ``data_dir`` overrides the folder (for a checkpoint trained elsewhere) and ``name`` the repository name;
    ``activations`` adds the convolutions' feature maps as outputs (`TrainSettings.activations`). Raises
    ValueError if the checkpoint holds another network than ``expected_model``.
    """
    set_threads(None)
    state = load_checkpoint(checkpoint)
    args: dict[str, Any] = state["args"]
    labels = tuple(args["labels"])
    spec = get_spec(args["model"]).with_labels(labels)
    if expected_model is not None and expected_model != spec.name:
        raise ValueError(f"{checkpoint} holds a {spec.name} network, not {expected_model}")
    name = name or args.get("name") or spec.name
    check_model_name(name)
    folder = data_dir or (Path(args["data_dir"]) if args.get("data_dir") else None)
    splits = load_splits(spec, folder, int(args["seed"]), labels)
    model = spec.create()
    model.load_state_dict(state["model"])
    history = [EpochRecord(**record) for record in state.get("history", [])]
    return export_and_evaluate(
        model,
        spec,
        splits,
        out_dir,
        run_dir or checkpoint.parent,
        training_seconds=sum(r.seconds for r in history),
        epochs=len(history),
        best_epoch=int(state["epoch"]),
        seed=int(args["seed"]),
        name=name,
        int8=int8,
        activations=activations,
    )


def model_metadata(
    spec: ModelSpec,
    labels: tuple[str, ...],
    extra: dict[str, str],
    *,
    name: str | None = None,
    description: str | None = None,
) -> ModelMetadata:
    """``spec``'s metadata for a model served as ``name`` (default the network's name)."""
    return ModelMetadata(
        name=name or spec.name,
        labels=labels,
        preprocessing=spec.preprocessing,
        output_kind=spec.output_kind,
        description=spec.description if description is None else description,
        extra=extra,
    )


def export_and_evaluate(
    model: nn.Module,
    spec: ModelSpec,
    splits: DataSplits,
    out_dir: Path,
    run_dir: Path,
    *,
    training_seconds: float,
    best_epoch: int,
    seed: int,
    epochs: int = 0,
    name: str | None = None,
    int8: bool = False,
    activations: bool = False,
) -> RunOutcome:
    """Export ``model`` as the next version of ``name`` (default the network's name), check parity, and compare
    ONNX and PyTorch on the test split.

    ``spec`` must be the network as trained, its labels the data's classes (`ModelSpec.with_labels`).
    """
    name = name or spec.name
    model.eval()
    test = _tensors(splits.test, spec)
    objective = Objective(spec.recipe.loss)
    torch_predictions = objective.predict(predict_outputs(model, test.inputs)).numpy()
    torch_accuracy = float(np.mean(torch_predictions == test.labels.numpy()))
    labels = splits.test.classes
    if labels != spec.labels:
        raise ValueError(f"the data's classes {labels} are not the network's {spec.labels}")
    extra = {
        "architecture": spec.name,
        "test_accuracy": f"{torch_accuracy:.4f}",
        "test_images": str(len(splits.test)),
        "data_source": splits.source,
        "seed": str(seed),
        "best_epoch": str(best_epoch),
        "exporter": f"torch.onnx dynamo opset {OPSET}",
        "torch_version": torch.__version__,
        "exported_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    seed_model = name == spec.name and labels == get_spec(spec.name).labels
    description = spec.description if seed_model else f"the {spec.name} network trained on {splits.source}"
    metadata = model_metadata(spec, labels, extra, name=name, description=description)
    proto = export_to_onnx(model, metadata, activations=activations)
    metadata = embedded_metadata(proto)
    model_bytes = proto.SerializeToString()
    parity = check_parity(model, model_bytes, test.inputs)
    onnx_predictions = _onnx_predictions(model_bytes, test.inputs.numpy(), objective.loss_name)
    onnx_accuracy = float(np.mean(onnx_predictions == test.labels.numpy()))
    version_dir = add_version(out_dir, name, model_bytes)
    int8_comparison = None
    if int8:
        int8_bytes = quantize_int8(model_bytes, metadata)
        int8_comparison = compare_int8(
            model_bytes,
            int8_bytes,
            test.inputs.numpy(),
            test.labels.numpy(),
            lambda outputs: objective.predict(torch.from_numpy(outputs)).numpy(),
        )
        int8_dir = add_version(out_dir, name + INT8_SUFFIX, int8_bytes)
        logger.info("wrote %s: %s", int8_dir / MODEL_FILE, int8_comparison)
    report = EvaluationReport(
        model=name,
        architecture=spec.name,
        version_dir=str(version_dir),
        data_source=splits.source,
        train_images=len(splits.train),
        validation_images=len(splits.validation),
        test_images=len(splits.test),
        pytorch_accuracy=torch_accuracy,
        onnx_accuracy=onnx_accuracy,
        onnx_agrees_with_pytorch=bool(np.array_equal(onnx_predictions, torch_predictions)),
        confusion_matrix=confusion_matrix(test.labels.numpy(), torch_predictions, len(labels)).tolist(),
        labels=list(labels),
        training_seconds=round(training_seconds, 2),
        best_epoch=best_epoch,
        epochs=epochs,
        parity_max_abs_difference=parity.max_abs_difference,
        int8=asdict(int8_comparison) if int8_comparison else None,
    )
    run_dir.mkdir(parents=True, exist_ok=True)
    write_report(report, run_dir)
    logger.info("wrote %s (test accuracy %.4f)", version_dir / MODEL_FILE, torch_accuracy)
    return RunOutcome(version_dir / MODEL_FILE, report)


def _onnx_predictions(model_bytes: bytes, inputs: np.ndarray, loss: LossName, batch: int = 256) -> np.ndarray:
    session = onnx_session(model_bytes)
    outputs = np.concatenate(
        [session.run([OUTPUT_NAME], {INPUT_NAME: inputs[i : i + batch]})[0] for i in range(0, len(inputs), batch)]
    )
    return Objective(loss).predict(torch.from_numpy(outputs)).numpy()


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
    """Train ``name`` on its offline data, export it, and return the new version's model file.

    Meant for tests and scripts that need a real model repository: with the default epochs ``xo`` takes about
    2 s and ``mnist_net`` about 10 s on two cores; pass ``epochs`` to go faster at lower accuracy. Without
    ``run_dir`` the checkpoints and plots go to a temporary folder that is removed afterwards. ``activations``
    adds the convolutions' feature maps as outputs (`TrainSettings.activations`).
    """
    settings = TrainSettings(
        model=name,
        out_dir=Path(out_dir),
        run_dir=Path(run_dir) if run_dir is not None else None,
        data_dir=Path(data_dir) if data_dir is not None else None,
        seed=seed,
        epochs=epochs,
        activations=activations,
        threads=1,
    )
    if run_dir is not None:
        return train_and_export(settings).model_path
    with tempfile.TemporaryDirectory(prefix=f"cnnserve-{name}-") as scratch:
        return train_and_export(replace(settings, run_dir=Path(scratch))).model_path


def read_metadata(model_path: Path) -> ModelMetadata:
    """The metadata stored in an exported model, read with onnx (no session needed)."""
    props = {p.key: p.value for p in onnx.load(str(model_path), load_external_data=False).metadata_props}
    return ModelMetadata.from_metadata_props(props)
