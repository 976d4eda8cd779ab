import numpy as np

from cnnserve.export import XO_LABELS, XOVariation, generate_xo, render_o, render_x
from cnnserve.export.xo_data import NO_VARIATION


def test_rendered_glyphs_are_9x9_white_strokes_on_black():
    for image in (render_x(), render_o()):
        assert image.shape == (9, 9)
        assert image.dtype == np.uint8
        assert set(np.unique(image)) == {0, 255}
        assert image[0, 0] == 0


def test_the_upright_x_has_both_diagonals_and_the_o_an_empty_centre():
    x, o = render_x(), render_o()
    assert all(x[i, i] == 255 and x[i, 8 - i] == 255 for i in range(1, 8))
    assert o[4, 4] == 0
    assert o[4, 1] == 255 and o[4, 7] == 255


def test_each_knob_changes_the_glyph():
    upright = render_x()
    assert not np.array_equal(render_x(shift=(1.0, 0.0)), upright)
    assert not np.array_equal(render_x(scale=0.7), upright)
    assert not np.array_equal(render_x(rotation=20.0), upright)
    assert (render_x(stroke=2.5) > 0).sum() > (upright > 0).sum()


def test_a_shifted_glyph_moves_right():
    columns = np.nonzero(render_o(shift=(1.0, 0.0)).any(axis=0))[0]
    assert columns.min() == 2 and columns.max() == 8


def test_generate_xo_is_balanced_labelled_and_repeatable():
    images, labels = generate_xo(100, seed=3)
    assert images.shape == (100, 9, 9) and labels.shape == (100,)
    assert labels.sum() == 50
    again, _ = generate_xo(100, seed=3)
    assert np.array_equal(images, again)
    assert not np.array_equal(images, generate_xo(100, seed=4)[0])
    assert XO_LABELS[1] == "X"


def test_without_variation_every_glyph_is_the_template():
    images, labels = generate_xo(10, seed=0, variation=NO_VARIATION)
    for image, label in zip(images, labels, strict=True):
        assert np.array_equal(image, render_x() if label == 1 else render_o())


def test_variation_knobs_are_typed():
    heavy = XOVariation(stroke_range=(2.0, 2.5))
    images, _ = generate_xo(20, seed=0, variation=heavy)
    light, _ = generate_xo(20, seed=0, variation=XOVariation(stroke_range=(0.8, 0.9)))
    assert (images > 0).sum() > (light > 0).sum()
