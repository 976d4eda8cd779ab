import numpy as np
import pytest

from cnnserve.export import get_spec
from cnnserve.export.datasets import load_splits
from cnnserve.export.splits import LabelledImages, split_indices


def test_split_indices_are_disjoint_and_cover_everything():
    split = split_indices(1000, validation_fraction=0.15, test_fraction=0.2, seed=1)
    train, validation, test = set(split.train), set(split.validation), set(split.test)
    assert not train & validation and not train & test and not validation & test
    assert train | validation | test == set(range(1000))
    assert (len(validation), len(test)) == (150, 200)


def test_the_same_seed_gives_the_same_split_and_another_seed_another():
    a = split_indices(100, validation_fraction=0.1, test_fraction=0.1, seed=5)
    b = split_indices(100, validation_fraction=0.1, test_fraction=0.1, seed=5)
    c = split_indices(100, validation_fraction=0.1, test_fraction=0.1, seed=6)
    assert np.array_equal(a.test, b.test)
    assert not np.array_equal(a.test, c.test)


def test_fractions_must_leave_training_data():
    with pytest.raises(ValueError):
        split_indices(10, validation_fraction=0.5, test_fraction=0.5, seed=0)


def _rows(data: LabelledImages) -> set[bytes]:
    return {image.tobytes() for image in data.images}


def test_generated_xo_test_images_never_appear_in_training():
    splits = load_splits(get_spec("xo"), None, seed=1)
    train, validation, test = _rows(splits.train), _rows(splits.validation), _rows(splits.test)
    assert not train & test and not train & validation and not validation & test
    assert len(splits.test) > 500


def test_digit_splits_are_disjoint_and_use_all_1797_digits():
    splits = load_splits(get_spec("mnist_net"), None, seed=1)
    assert len(splits.train) + len(splits.validation) + len(splits.test) == 1797
    assert not _rows(splits.train) & _rows(splits.test)
