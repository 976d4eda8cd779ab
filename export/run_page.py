"""A finished training run as a page of the docs: what was trained on what, the test accuracy, the time it took,
per-class results, and the run's curves and confusion matrix.

`make fashion` writes docs/fashion-mnist.md with it, so the page always shows what the last run measured rather
than numbers copied by hand. Run as ``python -m cnnserve.export.run_page RUN_DIR PAGE --command "..."``; the
images go to a folder named after the page (``docs/fashion-mnist/``). Needs only the run folder's files.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .report import CONFUSION_PNG, CURVES_FILE, REPORT_FILE
from .training import HISTORY_FILE


def _processor() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _per_class_rows(matrix: np.ndarray, labels: Sequence[str]) -> list[str]:
    rows = ["| class | test images | correct | accuracy | most often taken for |", "|---|---:|---:|---:|---|"]
    for index, label in enumerate(labels):
        row = matrix[index]
        total, correct = int(row.sum()), int(row[index])
        wrong = row.copy()
        wrong[index] = 0
        confused = f"{labels[int(wrong.argmax())]} ({int(wrong.max())})" if wrong.max() else "-"
        accuracy = f"{correct / total:.1%}" if total else "-"
        rows.append(f"| {label} | {total} | {correct} | {accuracy} | {confused} |")
    return rows


def _epoch_times(history: list[dict]) -> str:
    seconds = sorted(r["seconds"] for r in history)
    if not seconds:
        return "no time"
    return f"median {float(np.median(seconds)):.0f} s, fastest {seconds[0]:.0f} s, slowest {seconds[-1]:.0f} s"


def render_page(
    report: dict, history: list[dict], *, title: str, command: str, image_folder: str, intro: str = ""
) -> str:
    """The Markdown page for one run's ``evaluation.json`` and ``history.json``; images are linked, not embedded."""
    matrix = np.asarray(report["confusion_matrix"])
    labels = report["labels"]
    seconds = report["training_seconds"]
    epochs = len(history)
    best = next((r for r in history if r["epoch"] == report["best_epoch"]), None)
    best_line = (
        f"validation loss {best['val_loss']:.4f}, validation accuracy {best['val_accuracy']:.2%}" if best else ""
    )
    lines = [
        f"# {title}",
        "",
        *([intro, ""] if intro else []),
        "Made by this command (the page is generated from its run folder by `cnnserve.export.run_page`):",
        "",
        f"```sh\n{command}\n```",
        "",
        "## Result",
        "",
        f"- **Test accuracy: {report['pytorch_accuracy']:.2%}** ({report['test_images']:,} test images; ONNX Runtime "
        f"{report['onnx_accuracy']:.2%}, same prediction for every image: {report['onnx_agrees_with_pytorch']}).",
        f"- Network `{report['architecture']}`, served as `{report['model']}` with {len(labels)} labels: "
        f"{', '.join(labels)}.",
        f"- Data: {report['data_source']}; {report['train_images']:,} train, {report['validation_images']:,} "
        f"validation and {report['test_images']:,} test images.",
        f"- Trained {epochs} epoch{'' if epochs == 1 else 's'} in {seconds / 60:.1f} min on {os.cpu_count()} CPU "
        f"cores ({_processor()}): {_epoch_times(history)} per epoch (wall-clock time, which other processes on the "
        "machine lengthen).",
        f"- Exported epoch {report['best_epoch']}, the lowest validation loss ({best_line}).",
        "",
        f"![loss and accuracy per epoch]({image_folder}/{CURVES_FILE})",
        "",
        "## Per class",
        "",
        *_per_class_rows(matrix, labels),
        "",
        f"![confusion matrix of the test set]({image_folder}/{CONFUSION_PNG})",
        "",
        "## Epochs",
        "",
        "| epoch | train loss | train accuracy | validation loss | validation accuracy | learning rate | seconds |",
        "|---:|---:|---:|---:|---:|---:|---:|",
        *(
            f"| {r['epoch']} | {r['train_loss']:.4f} | {r['train_accuracy']:.2%} | {r['val_loss']:.4f} | "
            f"{r['val_accuracy']:.2%} | {r['learning_rate']:.2g} | {r['seconds']:.0f} |"
            for r in history
        ),
        "",
    ]
    return "\n".join(lines)


def write_run_page(run_dir: Path, page: Path, *, title: str, command: str, intro: str = "") -> None:
    """Write ``page`` and copy the run's curves and confusion matrix into ``page``'s image folder.

    Raises FileNotFoundError when ``run_dir`` lacks a finished run's files.
    """
    report = json.loads((run_dir / REPORT_FILE).read_text())
    history = json.loads((run_dir / HISTORY_FILE).read_text())
    images = page.with_suffix("")
    images.mkdir(parents=True, exist_ok=True)
    for name in (CURVES_FILE, CONFUSION_PNG):
        shutil.copyfile(run_dir / name, images / name)
    text = render_page(report, history, title=title, command=command, image_folder=images.name, intro=intro)
    page.write_text(text)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cnnserve.export.run_page", description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="a finished `cnnserve train` run folder")
    parser.add_argument("page", type=Path, metavar="PAGE", help="the Markdown file to write")
    parser.add_argument("--title", default="Training run", help="the page's heading")
    parser.add_argument("--command", required=True, help="the command that made the run, shown on the page")
    parser.add_argument("--intro", default="", help="a Markdown paragraph under the heading")
    args = parser.parse_args(argv)
    write_run_page(args.run_dir, args.page, title=args.title, command=args.command, intro=args.intro)
    print(f"wrote {args.page} and {args.page.with_suffix('')}/")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
