"""The six seed networks from the lecture notes, ported to PyTorch (NCHW).

Each class follows its row of the seed-model table layer by layer, so its parameter count equals the table's;
a test holds every port to that number. Every network takes ``num_classes`` (default: the table's) and sizes only
its last layer by it, so the same architecture trains on data with any number of classes. Keras examples end in
``Dense(10, softmax)``: here they end in the last linear layer and are trained with cross-entropy on logits
(numerically safer than softmax followed by a log), so they export as ``OutputKind.LOGITS`` and the server
applies the softmax. ``MnistNet`` keeps its ``log_softmax`` (the PyTorch example trains with NLL) and
``CatsDogsNet`` keeps its sigmoid for two classes, because the table defines their outputs that way; for any
other class count ``CatsDogsNet`` ends in logits like the other Keras ports (a softmax head).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

XO_HAND_SET_FILTERS = (
    ((1, -1, -1), (-1, 1, -1), (-1, -1, 1)),
    ((1, -1, 1), (-1, 1, -1), (1, -1, 1)),
    ((-1, -1, 1), (-1, 1, -1), (1, -1, -1)),
)
"""The notes' three line detectors, "\\", "X" and "/"; the network may start from them (divided by 9)."""


class XONet(nn.Module):
    """The X's and O's toy ConvNet: 27 filter weights and a 12->2 classifier, 53 parameters."""

    def __init__(self, num_classes: int = 2, hand_set_filters: bool = True) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 3, kernel_size=3, bias=False)
        self.pool1 = nn.MaxPool2d(2, stride=2, ceil_mode=True)
        self.pool2 = nn.MaxPool2d(2, stride=2)
        self.fc = nn.Linear(12, num_classes)
        if hand_set_filters:
            with torch.no_grad():
                self.conv.weight.copy_(torch.tensor(XO_HAND_SET_FILTERS, dtype=torch.float32)[:, None] / 9)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool2(self.pool1(F.relu(self.conv(x))))
        return self.fc(torch.flatten(x, 1))


class MnistNet(nn.Module):
    """PyTorch's MNIST example "Net" with its log-softmax output (trained with NLL loss)."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 10, kernel_size=5)
        self.conv2 = nn.Conv2d(10, 20, kernel_size=5)
        self.conv2_drop = nn.Dropout2d(0.5)
        self.fc1 = nn.Linear(320, 50)
        self.fc1_drop = nn.Dropout(0.5)
        self.fc2 = nn.Linear(50, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(F.max_pool2d(self.conv1(x), 2))
        x = F.relu(F.max_pool2d(self.conv2_drop(self.conv2(x)), 2))
        x = self.fc1_drop(F.relu(self.fc1(torch.flatten(x, 1))))
        return F.log_softmax(self.fc2(x), dim=1)


class MnistConvNet(nn.Module):
    """Chollet's Keras MNIST ConvNet (valid padding throughout); returns logits."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 32, 3),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(64, 64, 3),
            nn.ReLU(),
        )
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(576, 64), nn.ReLU(), nn.Linear(64, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class MnistCnn32(nn.Module):
    """The elitedatascience Keras MNIST CNN: two 32-filter convolutions, then a 128-unit layer; logits."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 32, 3),
            nn.ReLU(),
            nn.Conv2d(32, 32, 3),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Dropout(0.25),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(12 * 12 * 32, 128), nn.ReLU(), nn.Dropout(0.5), nn.Linear(128, num_classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class MnistWide(nn.Module):
    """The Keras 2 MNIST CNN with 'same' padding; logits.

    Keras ``Conv2D(5x5, padding='same')`` at stride 1 pads 2 on every side, which is ``padding=2`` here.
    ``MaxPooling2D(2, strides=2, padding='same')`` only pads when the input size is odd; the inputs are 28 and
    14, both even, so it equals a plain ``MaxPool2d(2)`` (ceil mode would give the same sizes too).
    """

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 32, 5, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(2, stride=2),
            nn.Conv2d(32, 64, 5, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(2, stride=2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(7 * 7 * 64, 1024), nn.ReLU(), nn.Dropout(0.5), nn.Linear(1024, num_classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class CatsDogsNet(nn.Module):
    """Chollet's cats-vs-dogs ConvNet for 3x150x150 inputs.

    With two classes it returns P(second class) (P(dog)) as a [batch, 1] sigmoid, as in the notes; with any
    other number it returns [batch, num_classes] logits.
    """

    def __init__(self, num_classes: int = 2) -> None:
        super().__init__()
        self.sigmoid = num_classes == 2
        layers: list[nn.Module] = []
        channels = 3
        for width in (32, 64, 128, 128):
            layers += [nn.Conv2d(channels, width, 3), nn.ReLU(), nn.MaxPool2d(2)]
            channels = width
        self.features = nn.Sequential(*layers)
        outputs = 1 if self.sigmoid else num_classes
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Dropout(0.5), nn.Linear(7 * 7 * 128, 512), nn.ReLU(), nn.Linear(512, outputs)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.classifier(self.features(x))
        return torch.sigmoid(logits) if self.sigmoid else logits


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
