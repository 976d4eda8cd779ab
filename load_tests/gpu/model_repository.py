"""The model repository the GPU check runs on, written where PyTorch is installed (the GPU host cannot train).

It holds the six seed networks, exported untrained by `cnnserve.export` (their real architectures,
preprocessing and labels, random weights: speed and CPU-versus-GPU agreement do not depend on training), and
one classifier that cnnserve did not write: a small PyTorch network exported with plain `torch.onnx.export` and
brought in with `cnnserve import`, the way a user serves their own model. Models already there are kept.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

from cnnserve.repository_layout import newest_model_file
from load_tests.bench.models import prepare_model

SEED_MODELS = ("xo", "mnist_net", "mnist_convnet", "mnist_cnn32", "mnist_wide", "catsdogs")
IMPORTED_MODEL = "plain_cnn"
IMPORTED_CLASSES = 10
IMPORTED_SIZE = 64


def write_model_repository(repository: Path, seeds: tuple[str, ...] = SEED_MODELS, imported: bool = True) -> list[str]:
    """Export the missing seed models into `repository` and import the plain model; returns the models' names.

    Needs the train extra (torch, onnx, onnxscript). Raises RuntimeError when `cnnserve import` refuses.
    """
    repository.mkdir(parents=True, exist_ok=True)
    for name in seeds:
        prepare_model(name, cache=repository)
    names = list(seeds)
    if imported:
        if newest_model_file(repository / IMPORTED_MODEL) is None:
            import_plain_model(repository, IMPORTED_MODEL)
        names.append(IMPORTED_MODEL)
    return names


def import_plain_model(repository: Path, name: str) -> None:
    """Export a small convolutional network with torch.onnx.export's defaults, then `cnnserve import` it with
    the ImageNet preset, as a user with their own PyTorch model would."""
    with tempfile.TemporaryDirectory(prefix="plain-model-") as scratch:
        source = export_plain_network(Path(scratch) / f"{name}.onnx")
        labels = Path(scratch) / "labels.txt"
        labels.write_text("".join(f"class {index}\n" for index in range(IMPORTED_CLASSES)))
        command = [sys.executable, "-m", "cnnserve", "import", str(source), "--repository", str(repository)]
        command += ["--name", name, "--labels", str(labels), "--preset", "imagenet"]
        completed = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
        if completed.returncode != 0:
            raise RuntimeError(f"cnnserve import refused {source.name}:\n{completed.stdout}{completed.stderr}")


def export_plain_network(path: Path) -> Path:
    """Two convolutions, pooling and a linear layer over RGB 64x64, logits out, a dynamic batch; random weights."""
    import torch

    torch.manual_seed(0)
    network = torch.nn.Sequential(
        torch.nn.Conv2d(3, 16, 3, padding=1),
        torch.nn.BatchNorm2d(16),
        torch.nn.ReLU(),
        torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(16, 32, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(4),
        torch.nn.Flatten(),
        torch.nn.Linear(32 * 4 * 4, IMPORTED_CLASSES),
    )
    network = network.eval()
    example = (torch.zeros(2, 3, IMPORTED_SIZE, IMPORTED_SIZE),)
    torch.onnx.export(network, example, str(path), dynamic_shapes=({0: torch.export.Dim("batch")},))
    return path
