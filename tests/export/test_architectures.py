import pytest
import torch

from cnnserve.export import MODEL_NAMES, get_spec
from cnnserve.export.architectures import XO_HAND_SET_FILTERS, XONet, count_parameters
from cnnserve.export.recipe import LossName
from cnnserve.metadata import OutputKind

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


@pytest.mark.parametrize("classes", [2, 3, 37])
@pytest.mark.parametrize("name", TABLE_PARAMETER_COUNTS)
def test_every_network_takes_a_head_for_any_number_of_classes(name, classes):
    spec = get_spec(name).with_labels(tuple(f"class {i}" for i in range(classes)))
    pre = spec.preprocessing
    with torch.no_grad():
        out = spec.create().eval()(torch.zeros(2, pre.channels, pre.height, pre.width))
    columns = 1 if spec.output_kind is OutputKind.SIGMOID else classes
    assert out.shape == (2, columns)
    assert spec.preprocessing == get_spec(name).preprocessing


@pytest.mark.parametrize(
    ("classes", "output_kind", "loss"),
    [(2, OutputKind.SIGMOID, LossName.BINARY_CROSS_ENTROPY), (3, OutputKind.LOGITS, LossName.CROSS_ENTROPY)],
)
def test_catsdogs_keeps_its_sigmoid_for_two_classes_and_turns_softmax_otherwise(classes, output_kind, loss):
    spec = get_spec("catsdogs").with_labels(tuple("abc"[:classes]))
    assert (spec.output_kind, spec.recipe.loss) == (output_kind, loss)
    assert spec.recipe.optimizer is get_spec("catsdogs").recipe.optimizer


def test_a_head_needs_two_distinct_classes():
    with pytest.raises(ValueError, match="at least two"):
        get_spec("mnist_net").with_labels(("only",))
    with pytest.raises(ValueError, match="repeated: a"):
        get_spec("mnist_net").with_labels(("a", "b", "a"))
