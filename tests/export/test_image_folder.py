"""catsdogs and user data: a folder with one subfolder per class, trained with augmentation."""

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from cnnserve.export import get_spec
from cnnserve.export.augment import Augmentation
from cnnserve.export.datasets import load_splits
from cnnserve.export.image_folder import load_image_folder
from cnnserve.export.pipeline import TrainSettings, read_metadata, train_and_export
from cnnserve.metadata import OutputKind


def make_pet_folder(root, per_class=10):
    """'cats' are orange discs, 'dogs' brown squares, on noisy backgrounds; 64x48 images of mixed formats."""
    rng = np.random.default_rng(0)
    for name, colour in (("cats", (230, 140, 30)), ("dogs", (110, 70, 40))):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            image = Image.fromarray(rng.integers(0, 80, (48, 64, 3), dtype=np.uint8))
            draw = ImageDraw.Draw(image)
            x, y = rng.integers(5, 30), rng.integers(5, 15)
            box = (x, y, x + 25, y + 25)
            (draw.ellipse if name == "cats" else draw.rectangle)(box, fill=colour)
            image.save(root / name / f"{i}.{'png' if i % 2 else 'jpg'}")
    return root


def test_classes_are_the_sorted_subfolders_and_images_are_resized_to_the_model(tmp_path):
    folder = make_pet_folder(tmp_path / "pets", per_class=3)
    (folder / "notes.txt").write_text("ignored")
    images, labels, classes = load_image_folder(folder, get_spec("catsdogs").preprocessing)
    assert classes == ("cats", "dogs")
    assert images.shape == (6, 150, 150, 3) and images.dtype == np.uint8
    assert labels.tolist() == [0, 0, 0, 1, 1, 1]


def test_the_folder_decides_the_classes_and_hidden_folders_are_not_classes(tmp_path):
    folder = make_pet_folder(tmp_path / "pets", per_class=4)
    (folder / "birds").mkdir()
    for i in range(4):
        Image.new("RGB", (10, 10), (0, 0, 255)).save(folder / "birds" / f"{i}.png")
    (folder / ".ipynb_checkpoints").mkdir()
    splits = load_splits(get_spec("catsdogs"), folder, seed=1)
    assert splits.train.classes == ("birds", "cats", "dogs")
    assert len(splits.train) + len(splits.validation) + len(splits.test) == 12


def test_class_folders_without_images_are_refused(tmp_path):
    folder = make_pet_folder(tmp_path / "pets", per_class=2)
    (folder / "birds").mkdir()
    with pytest.raises(ValueError, match="holds no images"):
        load_splits(get_spec("catsdogs"), folder, seed=1)


def test_catsdogs_needs_a_data_folder():
    with pytest.raises(ValueError, match="--data-dir"):
        load_splits(get_spec("catsdogs"), None, seed=1)


def test_augmentation_keeps_shape_and_is_repeatable_with_a_seed():
    batch = torch.rand(4, 3, 32, 32)
    augment = Augmentation()
    first = augment(batch, torch.Generator().manual_seed(0))
    second = augment(batch, torch.Generator().manual_seed(0))
    assert first.shape == batch.shape
    assert torch.equal(first, second)
    assert not torch.allclose(first, batch)


def test_augmentation_with_every_knob_at_zero_is_the_identity():
    still = Augmentation(rotation_degrees=0, shift_fraction=0, shear=0, zoom=0, horizontal_flip=False)
    batch = torch.rand(2, 1, 9, 9)
    assert torch.allclose(still(batch, torch.Generator().manual_seed(0)), batch, atol=1e-5)


def test_catsdogs_trains_on_an_image_folder_and_exports_a_sigmoid_model(tmp_path):
    folder = make_pet_folder(tmp_path / "pets", per_class=10)
    outcome = train_and_export(
        TrainSettings(
            model="catsdogs", out_dir=tmp_path / "models", run_dir=tmp_path / "run", data_dir=folder, epochs=1
        )
    )
    metadata = read_metadata(outcome.model_path)
    assert metadata.output_kind is OutputKind.SIGMOID
    assert metadata.labels == ("cats", "dogs")
    assert (metadata.preprocessing.height, metadata.preprocessing.width) == (150, 150)
    assert outcome.report.onnx_agrees_with_pytorch
