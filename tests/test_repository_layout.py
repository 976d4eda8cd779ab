"""The repository layout that export writes and the server reads: names, version folders, the next version."""

from __future__ import annotations

import pytest

from cnnserve.repository_layout import (
    MODEL_FILE,
    check_model_name,
    is_model_name,
    model_versions,
    newest_model_file,
    next_version,
)


@pytest.mark.parametrize("name", ["xo", "mnist_net", "catsdogs_int8", "resnet-50.v2", "7"])
def test_letters_digits_underscores_dots_and_dashes_name_a_model(name) -> None:
    assert is_model_name(name)
    check_model_name(name)


@pytest.mark.parametrize("name", ["", ".staging-1", "-x", "_x", "a/b", "..", "a b", "ünï"])
def test_other_names_are_refused(name) -> None:
    assert not is_model_name(name)
    with pytest.raises(ValueError, match="must be letters, digits"):
        check_model_name(name)


def test_a_version_is_an_integer_named_folder_holding_the_model_file(tmp_path) -> None:
    for folder in ("1", "3", "10", "4", "latest", ".staging-2"):
        (tmp_path / folder).mkdir()
    for folder in ("1", "3", "10", "latest", ".staging-2"):
        (tmp_path / folder / MODEL_FILE).write_bytes(b"onnx")
    (tmp_path / "12").write_bytes(b"a file, not a folder")
    assert model_versions(tmp_path) == {1: tmp_path / "1", 3: tmp_path / "3", 10: tmp_path / "10"}
    assert newest_model_file(tmp_path) == tmp_path / "10" / MODEL_FILE


def test_a_folder_without_the_model_file_still_takes_its_number(tmp_path) -> None:
    (tmp_path / "2").mkdir()
    (tmp_path / "2" / MODEL_FILE).write_bytes(b"onnx")
    (tmp_path / "5").mkdir()
    assert next_version(tmp_path) == 6, "an export in progress has reserved 5"
    assert sorted(model_versions(tmp_path)) == [2]


def test_a_model_folder_that_does_not_exist_has_no_versions(tmp_path) -> None:
    missing = tmp_path / "missing"
    assert model_versions(missing) == {}
    assert newest_model_file(missing) is None
    assert next_version(missing) == 1
