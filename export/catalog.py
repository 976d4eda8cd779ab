"""The six seed models: architecture, preprocessing, labels, output kind, data and recipe of each.

Everything a model needs to be trained, exported and served is decided here once, so `cnnserve train ARCH`
needs nothing but the name. Trained on data of its own (`ModelSpec.with_labels`), a network keeps its input,
preprocessing and recipe and only its classifier head follows the data's classes. This module imports no torch;
`ModelSpec.create` imports the architecture late.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, replace
from enum import StrEnum

from cnnserve.metadata import ColorMode, OutputKind, Preprocessing

from .recipe import LossName, OptimizerName, TrainingRecipe


class DataKind(StrEnum):
    """Where a model's training data comes from when no --data-dir is given."""

    GENERATED_XO = "generated_xo"
    DIGITS = "digits"
    """scikit-learn digits as 28x28."""
    IMAGE_FOLDER = "image_folder"
    """None: --data-dir is required."""


@dataclass(frozen=True)
class ModelSpec:
    name: str
    architecture: str
    """Class name in `cnnserve.export.architectures`."""
    parameter_count: int
    """The table's exact count with the seed labels; a faithful port matches it."""
    preprocessing: Preprocessing
    labels: tuple[str, ...]
    output_kind: OutputKind
    data: DataKind
    recipe: TrainingRecipe
    description: str
    offline_epochs: int | None = None
    """Epochs on the small offline stand-in data when the table's count assumes 60,000 MNIST images."""

    def create(self):
        """A freshly initialised ``torch.nn.Module`` with a head for ``labels`` (imports torch)."""
        architectures = importlib.import_module("cnnserve.export.architectures")
        return getattr(architectures, self.architecture)(num_classes=len(self.labels))

    def with_labels(self, labels: tuple[str, ...]) -> ModelSpec:
        """This network for the classes ``labels``: same input, preprocessing and recipe, a head of their size.

        A sigmoid head exists only for two classes; for any other count it becomes a softmax head (logits,
        trained with cross-entropy). Raises ValueError for fewer than two labels or a repeated one.
        """
        if labels == self.labels:
            return self
        if len(labels) < 2:
            raise ValueError(f"a classifier needs at least two classes, got {len(labels)}: {', '.join(labels)}")
        repeated = sorted({label for label in labels if labels.count(label) > 1})
        if repeated:
            raise ValueError(f"class names must differ; repeated: {', '.join(repeated)}")
        spec = replace(self, labels=tuple(labels))
        if self.output_kind is OutputKind.SIGMOID and len(labels) != 2:
            recipe = replace(self.recipe, loss=LossName.CROSS_ENTROPY)
            spec = replace(spec, output_kind=OutputKind.LOGITS, recipe=recipe)
        return spec


_MNIST_PIXELS = Preprocessing(color=ColorMode.GRAYSCALE, height=28, width=28)
_DIGITS = tuple(str(d) for d in range(10))

_SPECS = (
    ModelSpec(
        name="xo",
        architecture="XONet",
        parameter_count=53,
        preprocessing=Preprocessing(color=ColorMode.GRAYSCALE, height=9, width=9, mean=(0.5,), std=(0.5,)),
        labels=("O", "X"),
        output_kind=OutputKind.LOGITS,
        data=DataKind.GENERATED_XO,
        # The notes give no recipe; Adam copes with 53 parameters and a hand-set start in a few epochs.
        recipe=TrainingRecipe(
            optimizer=OptimizerName.ADAM,
            learning_rate=0.02,
            loss=LossName.CROSS_ENTROPY,
            batch_size=32,
            epochs=10,
        ),
        description="X's and O's toy ConvNet on generated 9x9 glyphs (white stroke on black)",
    ),
    ModelSpec(
        name="mnist_net",
        architecture="MnistNet",
        parameter_count=21_840,
        preprocessing=Preprocessing(color=ColorMode.GRAYSCALE, height=28, width=28, mean=(0.1307,), std=(0.3081,)),
        labels=_DIGITS,
        output_kind=OutputKind.LOG_PROBABILITIES,
        data=DataKind.DIGITS,
        recipe=TrainingRecipe(
            optimizer=OptimizerName.SGD,
            learning_rate=0.01,
            momentum=0.5,
            loss=LossName.NLL,
            batch_size=64,
            epochs=3,
            early_stopping_patience=12,
        ),
        offline_epochs=80,
        description="PyTorch MNIST example Net (white digit on black, MNIST convention)",
    ),
    ModelSpec(
        name="mnist_convnet",
        architecture="MnistConvNet",
        parameter_count=93_322,
        preprocessing=_MNIST_PIXELS,
        labels=_DIGITS,
        output_kind=OutputKind.LOGITS,
        data=DataKind.DIGITS,
        # Keras RMSprop defaults (lr 0.001); batch 64 and 5 epochs as in Chollet's example.
        recipe=TrainingRecipe(
            optimizer=OptimizerName.RMSPROP,
            learning_rate=0.001,
            loss=LossName.CROSS_ENTROPY,
            batch_size=64,
            epochs=5,
        ),
        offline_epochs=40,
        description="Keras MNIST ConvNet, Chollet style (white digit on black)",
    ),
    ModelSpec(
        name="mnist_cnn32",
        architecture="MnistCnn32",
        parameter_count=600_810,
        preprocessing=_MNIST_PIXELS,
        labels=_DIGITS,
        output_kind=OutputKind.LOGITS,
        data=DataKind.DIGITS,
        recipe=TrainingRecipe(
            optimizer=OptimizerName.ADAM,
            learning_rate=0.001,
            loss=LossName.CROSS_ENTROPY,
            batch_size=32,
            epochs=10,
        ),
        offline_epochs=15,
        description="Keras MNIST CNN, elitedatascience style (white digit on black)",
    ),
    ModelSpec(
        name="mnist_wide",
        architecture="MnistWide",
        parameter_count=3_274_634,
        preprocessing=_MNIST_PIXELS,
        labels=_DIGITS,
        output_kind=OutputKind.LOGITS,
        data=DataKind.DIGITS,
        recipe=TrainingRecipe(
            optimizer=OptimizerName.ADAM,
            learning_rate=0.001,
            loss=LossName.CROSS_ENTROPY,
            batch_size=64,
            epochs=10,
        ),
        offline_epochs=15,
        description="Keras 2 MNIST CNN with 'same' padding (white digit on black)",
    ),
    ModelSpec(
        name="catsdogs",
        architecture="CatsDogsNet",
        parameter_count=3_453_121,
        preprocessing=Preprocessing(color=ColorMode.RGB, height=150, width=150),
        labels=("cats", "dogs"),
        output_kind=OutputKind.SIGMOID,
        data=DataKind.IMAGE_FOLDER,
        # Chollet: RMSprop lr 1e-4, binary cross-entropy, batch 20, 100 epochs, augmentation on.
        recipe=TrainingRecipe(
            optimizer=OptimizerName.RMSPROP,
            learning_rate=1e-4,
            loss=LossName.BINARY_CROSS_ENTROPY,
            batch_size=20,
            epochs=100,
            early_stopping_patience=15,
            augment=True,
        ),
        description="Keras cats-vs-dogs ConvNet; outputs P(dogs)",
    ),
)

MODEL_SPECS: dict[str, ModelSpec] = {spec.name: spec for spec in _SPECS}
MODEL_NAMES: tuple[str, ...] = tuple(MODEL_SPECS)


def get_spec(name: str) -> ModelSpec:
    try:
        return MODEL_SPECS[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(MODEL_NAMES)}") from None
