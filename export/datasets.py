"""Choosing and splitting a model's data, all of it offline.

Given a model and an optional ``--data-dir`` this picks the source: generated X's and O's; MNIST-style IDX
files (their own train/test files, validation carved from train), such as Fashion-MNIST; a folder of class
subfolders; or, by default for the MNIST-shaped models, scikit-learn's digits redrawn at 28x28. The data decides
the classes (an image folder's sorted subfolder names, or one per IDX label value) and every image is brought to
the network's input size and colour, so any network trains on any of them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from cnnserve.metadata import Preprocessing
from cnnserve.preprocessing import fit_to_model

from .catalog import DataKind, ModelSpec
from .digits_data import load_digit_images
from .idx import has_mnist_files, load_mnist_split
from .image_folder import is_image_folder, load_image_folder
from .splits import DataSplits, LabelledImages, split_data, split_indices
from .xo_data import XO_LABELS, generate_xo

XO_POOL_SIZE = 4000
VALIDATION_FRACTION = 0.15
TEST_FRACTION = 0.2
IDX_VALIDATION_FRACTION = 1 / 6
"""10,000 of MNIST's 60,000 training images, the usual validation split."""


def load_splits(spec: ModelSpec, data_dir: Path | None, seed: int, labels: tuple[str, ...] | None = None) -> DataSplits:
    """Train, validation and test sets for ``spec``'s network, the same for the same arguments.

    The classes are the data's: an image folder's sorted subfolder names, IDX label values 0..K-1 (named
    "0".."K-1"), or the built-in data's own. ``labels`` names them instead, one name per class in class order;
    for IDX data it also fixes the class count, so a subset that lacks the last classes keeps them. Raises
    ValueError when ``data_dir`` holds nothing usable or ``labels`` does not fit the data.
    """
    if data_dir is None:
        return _relabel(_built_in(spec, seed), labels)
    if not data_dir.is_dir():
        raise ValueError(f"--data-dir {data_dir} is not a folder")
    if has_mnist_files(data_dir):
        return _idx_splits(spec.preprocessing, data_dir, seed, labels)
    if is_image_folder(data_dir):
        images, targets, classes = load_image_folder(data_dir, spec.preprocessing)
        pool = _relabel_pool(LabelledImages(images, targets, classes), labels)
        return _split(pool, seed, f"image folder {data_dir}")
    raise ValueError(f"{data_dir} holds neither MNIST-style IDX files nor class subfolders")


def _built_in(spec: ModelSpec, seed: int) -> DataSplits:
    if spec.data is DataKind.GENERATED_XO:
        images, targets = generate_xo(XO_POOL_SIZE, seed=seed)
        pool = LabelledImages(images, targets, XO_LABELS).unique()
        return _split(pool, seed, f"generated X/O glyphs ({len(pool)} distinct of {XO_POOL_SIZE})")
    if spec.data is DataKind.DIGITS:
        images, targets = load_digit_images()
        return _split(LabelledImages(images, targets, spec.labels), seed, "scikit-learn digits at 28x28")
    raise ValueError(f"{spec.name} has no built-in data: give --data-dir, a folder with one subfolder per class")


def _split(pool: LabelledImages, seed: int, source: str) -> DataSplits:
    return split_data(
        pool, validation_fraction=VALIDATION_FRACTION, test_fraction=TEST_FRACTION, seed=seed, source=source
    )


def _idx_splits(preprocessing: Preprocessing, data_dir: Path, seed: int, labels: tuple[str, ...] | None) -> DataSplits:
    """The t10k files are the test set; validation is a seeded sixth of the train files."""
    train_images, train_targets = load_mnist_split(data_dir, "train")
    test_images, test_targets = load_mnist_split(data_dir, "test")
    class_count = int(max(train_targets.max(), test_targets.max())) + 1
    if labels is None:
        labels = tuple(str(value) for value in range(class_count))
    elif len(labels) < class_count:
        raise ValueError(f"{len(labels)} class names given, but the IDX labels in {data_dir} reach {class_count - 1}")
    train_pool = LabelledImages(fit_images(train_images, preprocessing), train_targets, labels)
    indices = split_indices(len(train_pool), validation_fraction=IDX_VALIDATION_FRACTION, test_fraction=0.0, seed=seed)
    return DataSplits(
        train=train_pool.subset(indices.train),
        validation=train_pool.subset(indices.validation),
        test=LabelledImages(fit_images(test_images, preprocessing), test_targets, labels),
        source=f"IDX files in {data_dir}",
    )


def fit_images(images: np.ndarray, preprocessing: Preprocessing) -> np.ndarray:
    """uint8 images in the model's size and colour; already fitting ones are returned as they are.

    Each image goes through `cnnserve.preprocessing.fit_to_model`, as the server treats a request.
    """
    shape = (preprocessing.height, preprocessing.width) + (() if preprocessing.channels == 1 else (3,))
    if images.shape[1:] == shape:
        return images
    return np.stack([fit_to_model(Image.fromarray(image), preprocessing) for image in images])


def _relabel_pool(pool: LabelledImages, labels: tuple[str, ...] | None) -> LabelledImages:
    if labels is None or labels == pool.classes:
        return pool
    if len(labels) != len(pool.classes):
        raise ValueError(f"{len(labels)} class names given for {len(pool.classes)} classes: {', '.join(pool.classes)}")
    return LabelledImages(pool.images, pool.labels, labels)


def _relabel(splits: DataSplits, labels: tuple[str, ...] | None) -> DataSplits:
    parts = (_relabel_pool(part, labels) for part in (splits.train, splits.validation, splits.test))
    return DataSplits(*parts, source=splits.source)


def read_class_names(path: Path) -> tuple[str, ...]:
    """Class names from a UTF-8 text file, one per line in class order; blank lines are skipped.

    Raises FileNotFoundError when there is no such file and ValueError when it names no class.
    """
    if not path.is_file():
        raise FileNotFoundError(f"no class-name file {path}")
    names = tuple(line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip())
    if not names:
        raise ValueError(f"{path} names no classes: write one class name per line")
    return names


def class_balance(data: LabelledImages) -> dict[str, int]:
    counts = np.bincount(data.labels, minlength=len(data.classes))
    return {name: int(c) for name, c in zip(data.classes, counts, strict=True)}
