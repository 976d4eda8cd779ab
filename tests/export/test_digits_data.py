import numpy as np

from cnnserve.export import DIGIT_LABELS, load_digit_images


def test_digits_are_28x28_white_on_black_in_the_central_box():
    images, labels = load_digit_images()
    assert images.shape == (1797, 28, 28) and images.dtype == np.uint8
    assert labels.shape == (1797,) and set(labels.tolist()) == set(range(10))
    assert images[:, :4].max() == 0 and images[:, 24:].max() == 0
    assert images[:, :, :4].max() == 0 and images[:, :, 24:].max() == 0
    assert images.max() == 255
    assert images.mean() < 60
    assert tuple("0123456789") == DIGIT_LABELS


def test_digits_are_cached_and_read_only():
    first, _ = load_digit_images()
    second, _ = load_digit_images()
    assert first is second
    assert not first.flags.writeable
