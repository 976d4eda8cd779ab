"""What a run leaves for a person to read: loss/accuracy curves, confusion matrix and evaluation report.

Plots use matplotlib's Agg backend (no display needed) and are written only into the run folder.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .training import EpochRecord

CURVES_FILE = "curves.png"
CONFUSION_PNG = "confusion_matrix.png"
REPORT_FILE = "evaluation.json"
REPORT_TEXT = "evaluation.txt"


@dataclass(frozen=True)
class EvaluationReport:
    model: str
    """The repository name."""
    architecture: str
    """The network (a catalog name)."""
    version_dir: str
    data_source: str
    train_images: int
    validation_images: int
    test_images: int
    pytorch_accuracy: float
    onnx_accuracy: float
    onnx_agrees_with_pytorch: bool
    """Every test image gets the same class from both runtimes."""
    confusion_matrix: list[list[int]]
    labels: list[str]
    training_seconds: float
    best_epoch: int
    """The exported checkpoint's epoch: the lowest validation loss."""
    epochs: int
    """Epochs trained (early stopping may end a run before its recipe's count)."""
    parity_max_abs_difference: float
    int8: dict[str, float] | None = None
    """Accuracy, latency and size of the dynamic-int8 variant against fp32, when one was made."""


def confusion_matrix(true: np.ndarray, predicted: np.ndarray, classes: int) -> np.ndarray:
    """Rows are true classes, columns predicted ones."""
    matrix = np.zeros((classes, classes), dtype=np.int64)
    np.add.at(matrix, (true, predicted), 1)
    return matrix


def format_confusion_matrix(matrix: np.ndarray, labels: Sequence[str]) -> str:
    width = max(6, *(len(label) + 1 for label in labels), len(str(int(matrix.max()))) + 1)
    header = "true\\pred".ljust(width) + "".join(label.rjust(width) for label in labels)
    rows = [
        label.ljust(width) + "".join(str(int(v)).rjust(width) for v in row)
        for label, row in zip(labels, matrix, strict=True)
    ]
    return "\n".join([header, *rows])


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def plot_curves(history: Sequence[EpochRecord], path: Path, title: str) -> None:
    plt = _pyplot()
    epochs = [r.epoch for r in history]
    figure, (loss_axis, accuracy_axis) = plt.subplots(1, 2, figsize=(10, 4))
    loss_axis.plot(epochs, [r.train_loss for r in history], label="train")
    loss_axis.plot(epochs, [r.val_loss for r in history], label="validation")
    loss_axis.set(xlabel="epoch", ylabel="loss", title="loss")
    accuracy_axis.plot(epochs, [r.train_accuracy for r in history], label="train")
    accuracy_axis.plot(epochs, [r.val_accuracy for r in history], label="validation")
    accuracy_axis.set(xlabel="epoch", ylabel="accuracy", title="accuracy")
    for axis in (loss_axis, accuracy_axis):
        axis.legend()
        axis.grid(alpha=0.3)
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=80)
    plt.close(figure)


def plot_confusion_matrix(matrix: np.ndarray, labels: Sequence[str], path: Path, title: str) -> None:
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(1.5 + 0.5 * len(labels), 1.2 + 0.5 * len(labels)))
    axis.imshow(matrix, cmap="Blues")
    axis.set(
        xticks=range(len(labels)),
        yticks=range(len(labels)),
        xticklabels=labels,
        yticklabels=labels,
        xlabel="predicted",
        ylabel="true",
        title=title,
    )
    if any(len(label) > 3 for label in labels):
        plt.setp(axis.get_xticklabels(), rotation=45, ha="right", rotation_mode="anchor")
    threshold = matrix.max() / 2 if matrix.size else 0
    for (row, column), value in np.ndenumerate(matrix):
        axis.text(
            column,
            row,
            str(value),
            ha="center",
            va="center",
            color="white" if value > threshold else "black",
            fontsize=8,
        )
    figure.tight_layout()
    figure.savefig(path, dpi=80)
    plt.close(figure)


def _int8_line(comparison: dict[str, float] | None) -> str:
    if not comparison:
        return ""
    return (
        f"int8 variant: accuracy {comparison['int8_accuracy']:.4f} vs fp32 {comparison['fp32_accuracy']:.4f}, "
        f"{comparison['int8_ms_per_batch']:.2f} vs {comparison['fp32_ms_per_batch']:.2f} ms per batch of "
        f"{comparison['batch_size']}, {comparison['int8_bytes']} vs {comparison['fp32_bytes']} bytes\n"
    )


def write_report(report: EvaluationReport, run_dir: Path) -> None:
    """evaluation.json, evaluation.txt and confusion_matrix.png in ``run_dir``."""
    (run_dir / REPORT_FILE).write_text(json.dumps(asdict(report), indent=1))
    matrix = np.asarray(report.confusion_matrix)
    text = (
        f"model {report.model} ({report.architecture} network, {len(report.labels)} classes) -> {report.version_dir}\n"
        f"data: {report.data_source}; {report.train_images} train, {report.validation_images} validation, "
        f"{report.test_images} test images\n"
        f"test accuracy: PyTorch {report.pytorch_accuracy:.4f}, ONNX Runtime {report.onnx_accuracy:.4f}"
        f" (same predictions: {report.onnx_agrees_with_pytorch})\n"
        f"best epoch {report.best_epoch} of {report.epochs}, training {report.training_seconds:.1f}s\n"
        f"{_int8_line(report.int8)}\n"
        f"confusion matrix (rows true, columns predicted):\n"
        f"{format_confusion_matrix(matrix, report.labels)}\n"
    )
    (run_dir / REPORT_TEXT).write_text(text)
    plot_confusion_matrix(matrix, report.labels, run_dir / CONFUSION_PNG, f"{report.model}: test set")
