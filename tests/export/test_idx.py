import gzip
from pathlib import Path

import numpy as np
import pytest

from cnnserve.export import get_spec
from cnnserve.export.datasets import load_splits, read_class_names
from cnnserve.export.idx import IdxFormatError, has_mnist_files, load_mnist_split, parse_idx, read_idx, write_idx
from cnnserve.export.pipeline import read_metadata

FASHION_LABELS = Path(__file__).parents[2] / "export" / "labels" / "fashion-mnist.txt"
FASHION_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)


def test_parse_idx_reads_the_header_and_the_data():
    data = bytes([0, 0, 0x08, 3, 0, 0, 0, 2, 0, 0, 0, 2, 0, 0, 0, 3]) + bytes(range(12))
    array = parse_idx(data)
    assert array.shape == (2, 2, 3) and array.dtype == np.uint8
    assert array[1, 1, 2] == 11


@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_idx_files_round_trip_raw_and_gzipped(tmp_path, suffix):
    images = np.random.default_rng(0).integers(0, 256, size=(5, 28, 28), dtype=np.uint8)
    path = tmp_path / f"images{suffix}"
    write_idx(path, images)
    assert np.array_equal(read_idx(path), images)
    if suffix:
        assert gzip.decompress(path.read_bytes())[:4] == bytes([0, 0, 8, 3])


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"\x01\x00\x08\x01\x00\x00\x00\x01\x00", "two zero bytes"),
        (b"\x00\x00\x0d\x01\x00\x00\x00\x01\x00\x00\x00\x00", "unsigned byte"),
        (b"\x00\x00\x08\x02\x00\x00", "truncated"),
        (b"\x00\x00\x08\x01\x00\x00\x00\x03\x01\x02", "needs 3 bytes"),
    ],
)
def test_malformed_idx_is_rejected_with_a_reason(data, message):
    with pytest.raises(IdxFormatError, match=message):
        parse_idx(data)


def _write_mnist(folder, n_train=60, n_test=20, gz=True, classes=10):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    suffix = ".gz" if gz else ""
    for split, n in (("train", n_train), ("t10k", n_test)):
        write_idx(folder / f"{split}-images-idx3-ubyte{suffix}", rng.integers(0, 256, (n, 28, 28), dtype=np.uint8))
        write_idx(folder / f"{split}-labels-idx1-ubyte{suffix}", np.arange(n, dtype=np.uint8) % classes)


def test_an_mnist_folder_gives_its_own_test_set_and_a_validation_set_carved_from_train(tmp_path):
    _write_mnist(tmp_path)
    assert has_mnist_files(tmp_path)
    images, labels = load_mnist_split(tmp_path, "test")
    assert images.shape == (20, 28, 28) and labels.dtype == np.int64
    splits = load_splits(get_spec("mnist_convnet"), tmp_path, seed=1)
    assert (len(splits.train), len(splits.validation), len(splits.test)) == (50, 10, 20)
    assert "IDX" in splits.source


def test_mismatched_image_and_label_files_are_reported(tmp_path):
    _write_mnist(tmp_path, gz=False)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.zeros(3, dtype=np.uint8))
    with pytest.raises(IdxFormatError, match="do not pair up"):
        load_mnist_split(tmp_path, "test")


def test_training_on_idx_files_can_name_the_classes_from_a_file(tmp_path, cnnserve):
    _write_mnist(tmp_path / "fashion")
    args = ["train", "mnist_net", "--out", str(tmp_path / "models"), "--run-dir", str(tmp_path / "run")]
    data = ["--data-dir", str(tmp_path / "fashion"), "--epochs", "1", "--name", "fashion"]
    assert cnnserve([*args, *data, "--labels", str(FASHION_LABELS)]) == 0
    metadata = read_metadata(tmp_path / "models" / "fashion" / "1" / "model.onnx")
    assert metadata.name == "fashion"
    assert metadata.labels == FASHION_CLASSES
    assert "IDX" in metadata.extra["data_source"]
    assert metadata.extra["architecture"] == "mnist_net"


def test_idx_classes_are_the_label_values_unless_named(tmp_path):
    folder = tmp_path / "idx"
    _write_mnist(folder, n_train=30, n_test=10, classes=13)
    splits = load_splits(get_spec("mnist_convnet"), folder, seed=1)
    assert splits.train.classes == tuple(str(value) for value in range(13))
    named = load_splits(get_spec("mnist_convnet"), folder, seed=1, labels=tuple("abcdefghijklmnop"))
    assert len(named.test.classes) == 16, "named classes may outnumber the labels a subset happens to hold"
    with pytest.raises(ValueError, match="3 class names given"):
        load_splits(get_spec("mnist_convnet"), folder, seed=1, labels=("a", "b", "c"))


def test_idx_images_are_resized_to_a_network_of_another_input(tmp_path):
    _write_mnist(tmp_path, n_train=12, n_test=6)
    xo = load_splits(get_spec("xo"), tmp_path, seed=1)
    assert xo.test.images.shape == (6, 9, 9)
    catsdogs = load_splits(get_spec("catsdogs"), tmp_path, seed=1)
    assert catsdogs.test.images.shape == (6, 150, 150, 3)


def test_the_shipped_fashion_mnist_class_names_are_the_documented_ten():
    assert read_class_names(FASHION_LABELS) == FASHION_CLASSES


def test_a_class_name_file_skips_blank_lines_and_must_name_a_class(tmp_path):
    (tmp_path / "names.txt").write_text("cat\n\n  dog  \n")
    assert read_class_names(tmp_path / "names.txt") == ("cat", "dog")
    (tmp_path / "empty.txt").write_text("\n")
    with pytest.raises(ValueError, match="names no classes"):
        read_class_names(tmp_path / "empty.txt")
    with pytest.raises(FileNotFoundError, match="no class-name file"):
        read_class_names(tmp_path / "missing.txt")
