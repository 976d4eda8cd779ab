"""Labelled image arrays and their train/validation/test split.

Validation decides checkpoints, early stopping and learning-rate decay, and test is looked at once at the end,
so the three must never share an image: splits are disjoint index sets drawn from one seeded permutation, and
generated data is de-duplicated before splitting so equal images cannot land on both sides.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class LabelledImages:
    """uint8 images, (N, H, W) for grayscale or (N, H, W, 3) for RGB, with int64 labels indexing ``classes``."""

    images: np.ndarray
    labels: np.ndarray
    classes: tuple[str, ...]

    def __post_init__(self) -> None:
        if len(self.images) != len(self.labels):
            raise ValueError(f"{len(self.images)} images but {len(self.labels)} labels")

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, indices: np.ndarray) -> LabelledImages:
        return LabelledImages(self.images[indices], self.labels[indices], self.classes)

    def unique(self) -> LabelledImages:
        """Drop repeated images, keeping the first of each (generated data repeats itself)."""
        flat = self.images.reshape(len(self.images), -1)
        _, first = np.unique(flat, axis=0, return_index=True)
        return self.subset(np.sort(first))


@dataclass(frozen=True)
class SplitIndices:
    train: np.ndarray
    validation: np.ndarray
    test: np.ndarray


@dataclass(frozen=True)
class DataSplits:
    train: LabelledImages
    validation: LabelledImages
    test: LabelledImages
    source: str
    """Where the data came from, recorded in the model's metadata."""


def split_indices(n: int, *, validation_fraction: float, test_fraction: float, seed: int) -> SplitIndices:
    """Disjoint index sets covering ``range(n)``; the same seed always gives the same split."""
    if not 0 <= validation_fraction < 1 or not 0 <= test_fraction < 1:
        raise ValueError("fractions must lie in [0, 1)")
    if validation_fraction + test_fraction >= 1:
        raise ValueError("validation and test together must leave some data for training")
    order = np.random.default_rng(seed).permutation(n)
    n_test = round(n * test_fraction)
    n_validation = round(n * validation_fraction)
    return SplitIndices(
        train=np.sort(order[n_test + n_validation :]),
        validation=np.sort(order[n_test : n_test + n_validation]),
        test=np.sort(order[:n_test]),
    )


def split_data(
    data: LabelledImages, *, validation_fraction: float, test_fraction: float, seed: int, source: str
) -> DataSplits:
    indices = split_indices(len(data), validation_fraction=validation_fraction, test_fraction=test_fraction, seed=seed)
    return DataSplits(data.subset(indices.train), data.subset(indices.validation), data.subset(indices.test), source)
