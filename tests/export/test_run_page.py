"""A finished run written up as a docs page, as `make fashion` does it."""

from __future__ import annotations

from pathlib import Path

from cnnserve.export import run_page


def test_a_run_folder_becomes_a_page_with_its_numbers_and_its_images(xo_run, workspace: Path, tmp_path: Path) -> None:
    page = tmp_path / "docs" / "xo-run.md"
    code = run_page.main(
        [str(workspace / "runs" / "xo"), str(page), "--title", "X and O", "--command", "make xo", "--intro", "Why."]
    )
    assert code == 0
    text = page.read_text()
    assert text.startswith("# X and O\n\nWhy.\n")
    assert f"**Test accuracy: {xo_run.report.pytorch_accuracy:.2%}**" in text
    assert "```sh\nmake xo\n```" in text
    assert "| X | " in text and "| O | " in text, "one row per class"
    assert "| 2 | " in text, "one row per epoch"
    for image in ("curves.png", "confusion_matrix.png"):
        assert (tmp_path / "docs" / "xo-run" / image).stat().st_size > 0
        assert f"](xo-run/{image})" in text
