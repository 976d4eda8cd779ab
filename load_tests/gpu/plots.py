"""The check's two figures (matplotlib, Agg: no display needed), one panel per model.

- bare_onnxruntime.png: images/s against batch size for each way of running bare ONNX Runtime (fp32 and fp16,
  plain runs, IO binding, CUDA graphs): where the GPU saturates, and what each technique buys;
- server.png: images/s (top) and requests/s (bottom) of every server configuration and request shape, with
  bare ONNX Runtime's best fp32 images/s and 0.8 of it (the target) as lines.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from load_tests.bench.plots import pyplot
from load_tests.gpu.results import BarePoint, ServerMeasurement
from load_tests.gpu.targets import SERVER_SHARE

_WAY_COLOURS = {"run": "tab:blue", "io_binding": "tab:orange", "cuda_graph": "tab:green"}
"""One colour per way of running; fp32 solid, fp16 dashed."""


def plot_bare(points: Sequence[BarePoint], path: Path) -> Path:
    plt = pyplot()
    models = list(dict.fromkeys(p.model for p in points))
    figure, axes = plt.subplots(1, len(models), figsize=(6.5 * len(models), 4.5), squeeze=False)
    for ax, model in zip(axes[0], models, strict=True):
        own = [p for p in points if p.model == model]
        for variant in dict.fromkeys(p.variant for p in own):
            line = sorted((p for p in own if p.variant == variant), key=lambda p: p.batch_size)
            precision, _, way = variant.partition(" ")
            ax.plot(
                [p.batch_size for p in line],
                [p.images_per_second for p in line],
                "--" if precision == "fp16" else "-",
                marker="o",
                color=_WAY_COLOURS.get(way),
                label=variant,
            )
        sizes = sorted({p.batch_size for p in own})
        ax.set_xscale("log", base=2)
        ax.set_xticks(sizes, [str(size) for size in sizes])
        ax.set_yscale("log")
        ax.set_xlabel("batch size")
        ax.set_ylabel("images/s")
        ax.set_title(f"{model}: bare ONNX Runtime")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def plot_server(measurements: Sequence[ServerMeasurement], bare: Sequence[BarePoint], path: Path) -> Path:
    plt = pyplot()
    models = list(dict.fromkeys(m.model for m in measurements))
    figure, axes = plt.subplots(2, len(models), figsize=(7 * len(models), 8), squeeze=False)
    for column, model in enumerate(models):
        own = [m for m in measurements if m.model == model]
        labels = [f"{m.configuration}\n{m.request}" for m in own]
        positions = range(len(own))
        images, requests = axes[0][column], axes[1][column]
        images.barh(positions, [m.point.images_per_second for m in own], color="tab:blue")
        requests.barh(positions, [m.point.requests_per_second for m in own], color="tab:orange")
        fp32 = [p.images_per_second for p in bare if p.model == model and p.variant.startswith("fp32")]
        if fp32:
            images.axvline(max(fp32), color="black", linestyle="--", label="bare ONNX Runtime best fp32")
            images.axvline(SERVER_SHARE * max(fp32), color="grey", linestyle=":", label=f"{SERVER_SHARE} x that")
            images.legend(fontsize=8, loc="lower right")
        for ax, unit in ((images, "images/s"), (requests, "requests/s")):
            ax.set_yticks(list(positions), labels, fontsize=7)
            ax.invert_yaxis()
            ax.set_xlabel(unit)
            ax.set_title(f"{model}: server, {unit}")
            ax.grid(True, axis="x", alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path
