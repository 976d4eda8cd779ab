"""Real Fashion-MNIST, from Debian's package dataset-fashion-mnist (.ci/run installs it): a short run on a subset,
through the same command as `make fashion`, must be far above chance (10%)."""

from __future__ import annotations

from pathlib import Path

import pytest

from cnnserve.export.idx import has_mnist_files, load_mnist_split, write_idx
from cnnserve.export.pipeline import read_metadata

FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
LABELS_FILE = Path(__file__).parents[2] / "export" / "labels" / "fashion-mnist.txt"

pytestmark = pytest.mark.skipif(
    not (FASHION_MNIST.is_dir() and has_mnist_files(FASHION_MNIST)),
    reason=f"no Fashion-MNIST IDX files in {FASHION_MNIST}: apt-get install dataset-fashion-mnist",
)


def write_subset(folder: Path, train: int, test: int) -> Path:
    """The first ``train`` and ``test`` real images, as IDX files of their own."""
    folder.mkdir()
    for split, stem, count in (("train", "train", train), ("test", "t10k", test)):
        images, labels = load_mnist_split(FASHION_MNIST, split)
        write_idx(folder / f"{stem}-images-idx3-ubyte", images[:count])
        write_idx(folder / f"{stem}-labels-idx1-ubyte", labels[:count])
    return folder


def test_one_epoch_on_5000_real_images_is_far_above_chance(tmp_path: Path, cnnserve, capsys) -> None:
    data = write_subset(tmp_path / "fashion", train=5000, test=1000)
    command = ["train", "mnist_convnet", "--data-dir", str(data), "--labels", str(LABELS_FILE), "--name", "fashion"]
    command += ["--out", str(tmp_path / "models"), "--run-dir", str(tmp_path / "run")]
    command += ["--epochs", "1", "--batch-size", "32"]
    assert cnnserve(command) == 0
    metadata = read_metadata(tmp_path / "models" / "fashion" / "1" / "model.onnx")
    assert metadata.labels[0] == "T-shirt/top" and metadata.labels[-1] == "Ankle boot"
    assert metadata.extra["test_images"] == "1000"
    accuracy = float(metadata.extra["test_accuracy"])
    assert accuracy > 0.6, f"test accuracy {accuracy:.3f} after one epoch on 4,167 images"
    assert "fashion (mnist_convnet, 10 classes): test accuracy" in capsys.readouterr().out
