"""A folder of images with one subfolder per class, as Keras' ``flow_from_directory`` reads it.

Classes are the subfolder names sorted alphabetically (cats=0, dogs=1), and every image is decoded, converted
and resized exactly as the server will do it (Pillow, bilinear), so training sees what serving sees.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from cnnserve.metadata import Preprocessing

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"})


def is_image_folder(folder: Path) -> bool:
    return folder.is_dir() and any(child.is_dir() for child in folder.iterdir())


def load_image_folder(folder: Path, preprocessing: Preprocessing) -> tuple[np.ndarray, np.ndarray, tuple]:
    """Images (N, H, W) or (N, H, W, 3) uint8, labels (N,) int64 and the sorted class names.

    Raises ValueError when the folder has no class subfolders or a class has no images.
    """
    classes = tuple(sorted(child.name for child in folder.iterdir() if child.is_dir()))
    if not classes:
        raise ValueError(f"{folder} has no class subfolders")
    size = (preprocessing.width, preprocessing.height)
    images, labels = [], []
    for label, name in enumerate(classes):
        files = sorted(p for p in (folder / name).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise ValueError(f"class folder {folder / name} holds no images")
        for path in files:
            with Image.open(path) as image:
                converted = image.convert(preprocessing.color.value)
            images.append(np.asarray(converted.resize(size, Image.Resampling.BILINEAR), dtype=np.uint8))
            labels.append(label)
    return np.stack(images), np.asarray(labels, dtype=np.int64), classes
