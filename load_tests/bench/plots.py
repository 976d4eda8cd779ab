"""The two plots of a benchmark run, one panel per model (matplotlib, Agg: no display needed).

- throughput.png: images/s against callers, batching off and on, with bare ONNX Runtime's best as the ceiling
  (images/s on a log scale when the ceiling is more than ten times what the server reached).
- latency.png: p99 latency against images/s (log scales; images/s linear when it spans less than 10x), the
  curve every serving system is judged by; bare ONNX Runtime's points (one per batch size, latency of the whole
  batch) show the best trade-off the machine allows.
- saturation.png: images/s of every saturation point (request shape x configuration) as bars, against bare
  ONNX Runtime's best and the 90% line.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from load_tests.bench.results import ModelResult
from load_tests.bench.settings import BATCHING_OFF, BATCHING_ON

_STYLE = {BATCHING_OFF: ("batching off", "tab:orange", "s"), BATCHING_ON: ("batching on", "tab:blue", "o")}


def pyplot():
    """matplotlib's pyplot on the Agg backend (files only, no display): every plot of the load tools draws with
    it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _panels(count: int):
    plt = pyplot()
    figure, axes = plt.subplots(1, count, figsize=(6 * count, 4.5), squeeze=False)
    return plt, figure, list(axes[0])


def plot_throughput(models: Sequence[ModelResult], path: Path) -> Path:
    from matplotlib.ticker import FuncFormatter, NullLocator

    plt, figure, axes = _panels(len(models))
    for ax, model in zip(axes, models, strict=True):
        for sweep in model.sweeps:
            label, color, marker = _STYLE.get(sweep.mode, (sweep.mode, None, "x"))
            ax.plot(
                [p.concurrency for p in sweep.points],
                [p.images_per_second for p in sweep.points],
                marker=marker,
                color=color,
                label=label,
            )
        best = model.onnxruntime_best()
        if best is not None:
            ax.axhline(
                best.images_per_second,
                color="black",
                linestyle="--",
                label=f"bare ONNX Runtime best ({best.label})",
            )
        ax.set_xscale("log", base=2)
        ax.set_xticks(sorted({p.concurrency for s in model.sweeps for p in s.points}))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _position: f"{value:g}"))
        ax.xaxis.set_minor_locator(NullLocator())
        served = max((p.images_per_second for s in model.sweeps for p in s.points), default=0.0)
        if best is not None and served > 0 and best.images_per_second > 10 * served:
            ax.set_yscale("log")
        else:
            ax.set_ylim(bottom=0)
        ax.set_xlabel("concurrent callers")
        ax.set_ylabel("images/s")
        ax.set_title(model.model)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize="small")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def plot_latency(models: Sequence[ModelResult], path: Path) -> Path:
    plt, figure, axes = _panels(len(models))
    for ax, model in zip(axes, models, strict=True):
        for sweep in model.sweeps:
            label, color, marker = _STYLE.get(sweep.mode, (sweep.mode, None, "x"))
            points = [p for p in sweep.points if p.latency.p99_ms is not None]
            ax.plot(
                [p.images_per_second for p in points],
                [p.latency.p99_ms for p in points],
                marker=marker,
                color=color,
                label=label,
            )
            for p in points:
                ax.annotate(str(p.concurrency), (p.images_per_second, p.latency.p99_ms), fontsize=7, color=color)
        bare = [p for p in model.onnxruntime if p.latency.p99_ms is not None and p.sessions == 1]
        if bare:
            ax.plot(
                [p.images_per_second for p in bare],
                [p.latency.p99_ms for p in bare],
                marker="^",
                color="black",
                linestyle="--",
                label="bare ONNX Runtime (per batch)",
            )
            for p in bare:
                ax.annotate(f"b{p.batch_size}", (p.images_per_second, p.latency.p99_ms), fontsize=7)
        rates = [p.images_per_second for s in model.sweeps for p in s.points] + [p.images_per_second for p in bare]
        if rates and min(rates) > 0 and max(rates) > 10 * min(rates):
            ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("images/s")
        ax.set_ylabel("p99 latency (ms)")
        ax.set_title(f"{model.model} (labels: callers, b = batch size)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize="small")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def plot_saturation(models: Sequence[ModelResult], path: Path) -> Path:
    from load_tests.bench.targets import SATURATION_FRACTION

    with_points = [model for model in models if model.saturation]
    plt = pyplot()
    figure, axes = plt.subplots(len(with_points), 1, figsize=(9, 2.2 + 0.55 * 6 * len(with_points)), squeeze=False)
    for ax, model in zip((row[0] for row in axes), with_points, strict=True):
        bars: list[tuple[str, float]] = []
        sweep = model.sweep(BATCHING_ON)
        served = sweep.best() if sweep is not None else None
        if served is not None:
            count = model.images_per_request
            bars.append(
                (f"defaults: {count} image{'s' if count > 1 else ''} per Classify call", served.images_per_second)
            )
        bars += [
            (f"{point.configuration}: {point.request}", point.point.images_per_second) for point in model.saturation
        ]
        positions = list(range(len(bars)))[::-1]
        ax.barh(positions, [value for _, value in bars], color="tab:blue")
        ax.set_yticks(positions, [label for label, _ in bars], fontsize=8)
        best = model.onnxruntime_best()
        if best is not None:
            ax.axvline(best.images_per_second, color="black", linestyle="--", label=f"bare ONNX Runtime ({best.label})")
            ax.axvline(
                SATURATION_FRACTION * best.images_per_second,
                color="tab:red",
                linestyle=":",
                label=f"{SATURATION_FRACTION:.0%} of it",
            )
            for position, (_, value) in zip(positions, bars, strict=True):
                ax.annotate(
                    f" {value / best.images_per_second:.2f}", (value, position), va="center", ha="left", fontsize=8
                )
        ax.set_xlabel("images/s")
        ax.set_title(f"{model.model}: the server saturated (ratio to bare ONNX Runtime's best)", fontsize=10)
        ax.grid(True, axis="x", alpha=0.3)
        ax.legend(fontsize="small", loc="upper center", bbox_to_anchor=(0.5, -0.28), ncol=2)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path
