"""Random affine augmentation of training batches, Keras ``ImageDataGenerator`` style.

The notes' cats-vs-dogs recipe augments with rotation 40, width/height shift 0.2, shear 0.2, zoom 0.2,
horizontal flip and ``fill_mode='nearest'``. One sampled affine map per image is applied with
``grid_sample``; ``padding_mode='border'`` repeats the edge pixels, which is Keras' nearest fill.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class Augmentation:
    rotation_degrees: float = 40.0
    shift_fraction: float = 0.2
    """Largest shift as a fraction of width (or height)."""
    shear: float = 0.2
    """Shear angle in radians (Keras 1 read its shear_range this way)."""
    zoom: float = 0.2
    """Scale drawn from [1 - zoom, 1 + zoom]."""
    horizontal_flip: bool = True

    def __call__(self, batch: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        n = batch.shape[0]

        def uniform(limit: float) -> torch.Tensor:
            return (torch.rand(n, generator=generator) * 2 - 1) * limit

        angle = uniform(math.radians(self.rotation_degrees))
        shear = uniform(self.shear)
        zoom = 1 + uniform(self.zoom)
        flip = torch.ones(n)
        if self.horizontal_flip:
            flip = torch.where(torch.rand(n, generator=generator) < 0.5, -1.0, 1.0)
        cos, sin = torch.cos(angle), torch.sin(angle)
        # Output-to-input map in grid_sample's [-1, 1] coordinates: rotate, shear, zoom, flip, then shift.
        theta = torch.zeros(n, 2, 3)
        theta[:, 0, 0] = cos * zoom * flip
        theta[:, 0, 1] = (-sin + cos * torch.tan(shear)) * zoom
        theta[:, 1, 0] = sin * zoom * flip
        theta[:, 1, 1] = (cos + sin * torch.tan(shear)) * zoom
        theta[:, 0, 2] = uniform(2 * self.shift_fraction)
        theta[:, 1, 2] = uniform(2 * self.shift_fraction)
        grid = F.affine_grid(theta, list(batch.shape), align_corners=False)
        return F.grid_sample(batch, grid, mode="bilinear", padding_mode="border", align_corners=False)
