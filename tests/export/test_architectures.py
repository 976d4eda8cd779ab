import pytest
import torch

from cnnserve.export import MODEL_NAMES, get_spec
from cnnserve.export.architectures import XO_HAND_SET_FILTERS, XONet, count_parameters

TABLE_PARAMETER_COUNTS = {
    "xo": 53,
    "mnist_net": 21_840,
    "mnist_convnet": 93_322,
    "mnist_cnn32": 600_810,
    "mnist_wide": 3_274_634,
    "catsdogs": 3_453_121,
}


def test_every_seed_model_is_in_the_catalog():
    assert set(MODEL_NAMES) == set(TABLE_PARAMETER_COUNTS)


@pytest.mark.parametrize("name", TABLE_PARAMETER_COUNTS)
def test_parameter_count_matches_the_seed_table(name):
    assert count_parameters(get_spec(name).create()) == TABLE_PARAMETER_COUNTS[name]


@pytest.mark.parametrize("name", TABLE_PARAMETER_COUNTS)
def test_output_is_one_row_per_image_and_one_column_per_class(name):
    spec = get_spec(name)
    pre = spec.preprocessing
    model = spec.create().eval()
    with torch.no_grad():
        out = model(torch.zeros(3, pre.channels, pre.height, pre.width))
    columns = 1 if name == "catsdogs" else len(spec.labels)
    assert out.shape == (3, columns)


def test_xo_can_start_from_the_hand_set_line_filters():
    weights = XONet(hand_set_filters=True).conv.weight
    assert torch.allclose(weights * 9, torch.tensor(XO_HAND_SET_FILTERS, dtype=torch.float32)[:, None])
