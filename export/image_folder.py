"""A folder of images with one subfolder per class, as Keras' ``flow_from_directory`` reads it.

Classes are the subfolder names sorted alphabetically (cats=0, dogs=1), as many as there are; hidden folders
(``.git``, ``.ipynb_checkpoints``) are not classes. Every image is converted and resized by
`cnnserve.preprocessing.fit_to_model`, as the server does it, so training sees what serving sees.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from cnnserve.metadata import Preprocessing
from cnnserve.preprocessing import fit_to_model

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"})


def class_folders(folder: Path) -> list[Path]:
    """The class subfolders of ``folder``, sorted by name."""
    return sorted(child for child in folder.iterdir() if child.is_dir() and not child.name.startswith("."))


def is_image_folder(folder: Path) -> bool:
    return folder.is_dir() and bool(class_folders(folder))


def load_image_folder(folder: Path, preprocessing: Preprocessing) -> tuple[np.ndarray, np.ndarray, tuple]:
    """Images (N, H, W) or (N, H, W, 3) uint8, labels (N,) int64 and the sorted class names.

    Raises ValueError when the folder has no class subfolders or a class has no images.
    """
    classes = tuple(child.name for child in class_folders(folder))
    if not classes:
        raise ValueError(f"{folder} has no class subfolders")
    images, labels = [], []
    for label, name in enumerate(classes):
        files = sorted(p for p in (folder / name).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise ValueError(f"class folder {folder / name} holds no images")
        for path in files:
            with Image.open(path) as image:
                images.append(fit_to_model(image, preprocessing))
            labels.append(label)
    return np.stack(images), np.asarray(labels, dtype=np.int64), classes
