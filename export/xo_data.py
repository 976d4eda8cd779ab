"""Generated 9x9 images of X's and O's, the toy data set of the notes.

The notes name the cases a small ConvNet finds hard: glyphs shifted off-centre, scaled, rotated, or drawn with
a heavier stroke. They are the knobs of `XOVariation`. Images are uint8 with 0 for background and 255 for
stroke, the way a PNG would carry them; the model's preprocessing maps them to -1 and +1.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

XO_LABELS = ("O", "X")
"""Class names in label order: 0 is O, 1 is X."""

SIZE = 9
_CENTRE = (SIZE - 1) / 2
_ARM = 3.0
"""Half the span of the upright template: at scale 1 the X runs from pixel 1 to 7, the O has radius 3."""
_SUPERSAMPLE = 5


@dataclass(frozen=True)
class XOVariation:
    """How far generated glyphs stray from the centred, upright, one-pixel template (drawn uniformly)."""

    max_shift: float = 1.0
    """Largest offset in pixels, along each axis."""
    scale_range: tuple[float, float] = (0.8, 1.15)
    max_rotation: float = 15.0
    """Largest rotation in degrees, either way. Beyond 45 an X turns into a plus sign."""
    stroke_range: tuple[float, float] = (0.8, 1.8)
    """Stroke width in pixels."""


NO_VARIATION = XOVariation(max_shift=0.0, scale_range=(1.0, 1.0), max_rotation=0.0, stroke_range=(1.0, 1.0))


def _sample_points() -> tuple[np.ndarray, np.ndarray]:
    offsets = (np.arange(_SUPERSAMPLE) + 0.5) / _SUPERSAMPLE - 0.5
    fine = (np.arange(SIZE)[:, None] + offsets[None, :]).reshape(-1)
    return np.meshgrid(fine, fine, indexing="xy")


_SAMPLE_X, _SAMPLE_Y = _sample_points()


def _distance_to_segment(px: np.ndarray, py: np.ndarray, a: tuple[float, float], b: tuple[float, float]):
    ax, ay = a
    dx, dy = b[0] - ax, b[1] - ay
    t = np.clip(((px - ax) * dx + (py - ay) * dy) / (dx * dx + dy * dy), 0.0, 1.0)
    return np.hypot(px - ax - t * dx, py - ay - t * dy)


def _render(glyph: str, shift: tuple[float, float], scale: float, rotation: float, stroke: float) -> np.ndarray:
    theta = np.deg2rad(rotation)
    cos, sin = np.cos(theta), np.sin(theta)
    x = _SAMPLE_X - _CENTRE - shift[0]
    y = _SAMPLE_Y - _CENTRE - shift[1]
    # Map each sample point back into the upright template's frame, then measure in pixels again.
    u = (cos * x + sin * y) / scale
    v = (-sin * x + cos * y) / scale
    if glyph == "X":
        distance = np.minimum(
            _distance_to_segment(u, v, (-_ARM, -_ARM), (_ARM, _ARM)),
            _distance_to_segment(u, v, (-_ARM, _ARM), (_ARM, -_ARM)),
        )
    else:
        distance = np.abs(np.hypot(u, v) - _ARM)
    inked = distance * scale <= stroke / 2
    coverage = inked.reshape(SIZE, _SUPERSAMPLE, SIZE, _SUPERSAMPLE).mean(axis=(1, 3))
    return np.where(coverage >= 0.4, 255, 0).astype(np.uint8)


def render_x(
    *, shift: tuple[float, float] = (0.0, 0.0), scale: float = 1.0, rotation: float = 0.0, stroke: float = 1.0
) -> np.ndarray:
    """One 9x9 uint8 X (255 on 0). ``shift`` is (right, down) in pixels, ``rotation`` in degrees."""
    return _render("X", shift, scale, rotation, stroke)


def render_o(
    *, shift: tuple[float, float] = (0.0, 0.0), scale: float = 1.0, rotation: float = 0.0, stroke: float = 1.0
) -> np.ndarray:
    """One 9x9 uint8 O (255 on 0), drawn with the same knobs as `render_x`."""
    return _render("O", shift, scale, rotation, stroke)


def generate_xo(n: int, seed: int = 0, variation: XOVariation = XOVariation()) -> tuple[np.ndarray, np.ndarray]:
    """``n`` random glyphs, half X and half O in random order: images (n, 9, 9) uint8 and labels (n,) int64.

    The same seed always gives the same images, so a held-out set can be regenerated exactly.
    """
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.arange(n) % 2).astype(np.int64)
    images = np.empty((n, SIZE, SIZE), dtype=np.uint8)
    for i, label in enumerate(labels):
        images[i] = _render(
            XO_LABELS[label],
            shift=tuple(rng.uniform(-variation.max_shift, variation.max_shift, size=2)),
            scale=rng.uniform(*variation.scale_range),
            rotation=rng.uniform(-variation.max_rotation, variation.max_rotation),
            stroke=rng.uniform(*variation.stroke_range),
        )
    return images, labels
