"""Choosing and splitting a model's data, all of it offline.

Given a model and an optional ``--data-dir`` this picks the source: generated X's and O's; MNIST or
Fashion-MNIST IDX files (their own train/test files, validation carved from train); a folder of class
subfolders; or, by default for the MNIST-shaped models, scikit-learn's digits redrawn at 28x28.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .catalog import DataKind, ModelSpec
from .digits_data import load_digit_images
from .idx import has_mnist_files, load_mnist_split
from .image_folder import is_image_folder, load_image_folder
from .splits import DataSplits, LabelledImages, split_data, split_indices
from .xo_data import XO_LABELS, generate_xo

XO_POOL_SIZE = 4000
VALIDATION_FRACTION = 0.15
TEST_FRACTION = 0.2


def load_splits(spec: ModelSpec, data_dir: Path | None, seed: int) -> DataSplits:
    """Train, validation and test sets for ``spec``, the same for the same arguments.

    Raises ValueError when ``data_dir`` holds nothing usable, or an image folder's class count does not match
    the model's outputs.
    """
    if spec.data is DataKind.GENERATED_XO and data_dir is None:
        images, labels = generate_xo(XO_POOL_SIZE, seed=seed)
        pool = LabelledImages(images, labels, XO_LABELS).unique()
        return _split(pool, seed, f"generated X/O glyphs ({len(pool)} distinct of {XO_POOL_SIZE})")
    if data_dir is None:
        if spec.data is DataKind.IMAGE_FOLDER:
            raise ValueError(f"{spec.name} trains on a folder of class subfolders: give --data-dir")
        images, labels = load_digit_images()
        return _split(LabelledImages(images, labels, spec.labels), seed, "scikit-learn digits at 28x28")
    if not data_dir.is_dir():
        raise ValueError(f"--data-dir {data_dir} is not a folder")
    if spec.data is not DataKind.IMAGE_FOLDER and has_mnist_files(data_dir):
        return _idx_splits(spec, data_dir, seed)
    if is_image_folder(data_dir):
        images, labels, classes = load_image_folder(data_dir, spec.preprocessing)
        _check_class_count(spec, classes)
        return _split(LabelledImages(images, labels, classes), seed, f"image folder {data_dir}")
    raise ValueError(f"{data_dir} holds neither MNIST IDX files nor class subfolders")


def _split(pool: LabelledImages, seed: int, source: str) -> DataSplits:
    return split_data(
        pool, validation_fraction=VALIDATION_FRACTION, test_fraction=TEST_FRACTION, seed=seed, source=source
    )


def _idx_splits(spec: ModelSpec, data_dir: Path, seed: int) -> DataSplits:
    train_images, train_labels = load_mnist_split(data_dir, "train")
    test_images, test_labels = load_mnist_split(data_dir, "test")
    if int(max(train_labels.max(), test_labels.max())) >= len(spec.labels):
        raise ValueError(f"IDX labels exceed the {len(spec.labels)} classes of {spec.name}")
    train_pool = LabelledImages(train_images, train_labels, spec.labels)
    indices = split_indices(len(train_pool), validation_fraction=1 / 6, test_fraction=0.0, seed=seed)
    return DataSplits(
        train=train_pool.subset(indices.train),
        validation=train_pool.subset(indices.validation),
        test=LabelledImages(test_images, test_labels, spec.labels),
        source=f"IDX files in {data_dir}",
    )


def _check_class_count(spec: ModelSpec, classes: tuple[str, ...]) -> None:
    if len(classes) != len(spec.labels):
        raise ValueError(
            f"{spec.name} classifies {len(spec.labels)} classes but the folder has {len(classes)}: {', '.join(classes)}"
        )


def class_balance(data: LabelledImages) -> dict[str, int]:
    counts = np.bincount(data.labels, minlength=len(data.classes))
    return {name: int(c) for name, c in zip(data.classes, counts, strict=True)}
