"""A benchmark run as files: results.json (everything), results.md (the tables) and the plots.

The Markdown leads with ratios (server over bare ONNX Runtime, batching on over off), because absolute numbers
move with the machine and ratios mostly do not.
"""

from __future__ import annotations

import json
from pathlib import Path

from load_tests.bench.results import BenchResult, LatencySummary, ModelResult, ServerPoint
from load_tests.bench.settings import BATCHING_OFF, BATCHING_ON
from load_tests.bench.targets import BATCHING_GAIN_CALLERS, saturation_ratio, server_best

MODE_TITLES = {BATCHING_OFF: "off", BATCHING_ON: "on"}


def write_reports(result: BenchResult, output_dir: Path, plots: bool = True) -> list[Path]:
    """Write every report file into `output_dir`; returns their paths."""
    output_dir.mkdir(parents=True, exist_ok=True)
    json_path = output_dir / "results.json"
    json_path.write_text(json.dumps(result.to_json_dict(), indent=2) + "\n")
    markdown_path = output_dir / "results.md"
    markdown_path.write_text(markdown(result))
    written = [json_path, markdown_path]
    if plots:
        from load_tests.bench.plots import plot_latency, plot_saturation, plot_throughput

        written.append(plot_throughput(result.models, output_dir / "throughput.png"))
        written.append(plot_latency(result.models, output_dir / "latency.png"))
        if any(model.saturation for model in result.models):
            written.append(plot_saturation(result.models, output_dir / "saturation.png"))
    return written


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _number(value: float | None, digits: int = 0) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def markdown(result: BenchResult) -> str:
    machine = result.machine
    settings = result.settings
    lines = [
        "# cnnserve benchmark",
        "",
        f"Run {result.started_at}, took {result.elapsed_seconds:.0f} s: `{result.command}`",
        "",
        f"Machine: {machine.get('cpu_model', '?')}, {machine.get('logical_cpus', '?')} logical CPUs, "
        f"{machine.get('memory_gb', '?')} GB; load average {machine.get('load_average_before', '?')} before and "
        f"{machine.get('load_average_after', '?')} after; Python {machine.get('python')}, "
        f"ONNX Runtime {machine.get('onnxruntime')}, grpcio {machine.get('grpcio')}.",
        "",
        f"Payload: {settings['payload']}, {settings['images_per_request']} image(s) per request; "
        f"{settings['processes']} load-generator processes; per point {settings['warmup_seconds']} s warm-up and "
        f"{settings['duration_seconds']} s measured; closed-loop callers.",
        "",
        "CPU columns are cores busy on average over the measured window (1.00 = one core fully used): the "
        "server process, the load-generator processes, and *other*: everything else that ran on the machine "
        "meanwhile. Bare ONNX Runtime's latency is per session call of the whole batch.",
        "",
    ]
    if result.targets:
        lines += ["## Targets", "", "| model | target | measured | required | result |", "|---|---|---|---|---|"]
        for check in result.targets:
            verdict = {True: "met", False: "**not met**", None: "not measured"}[check.passed]
            lines.append(f"| {check.model} | {check.name} | {check.measured} | {check.required} | {verdict} |")
        lines.append("")
    for model in result.models:
        lines += _model_section(model)
    return "\n".join(lines)


def _model_section(model: ModelResult) -> list[str]:
    lines = [
        f"## {model.model}",
        "",
        f"Input {'x'.join(str(d) for d in model.input_shape)}, weights {model.weights}, "
        f"{model.request_bytes:,} bytes per request.",
        "",
    ]
    lines += [f"- {line}" for line in _ratios(model)]
    lines += [
        "",
        "### Bare ONNX Runtime (the limit)",
        "",
        "| batch size | sessions x threads | images/s | p50 ms | p95 ms | p99 ms | CPU | other CPU |",
        "|---:|:---|---:|---:|---:|---:|---:|---:|",
    ]
    for p in model.onnxruntime:
        lat = p.latency
        layout = f"{p.sessions} x {p.threads_per_session or 'all'}"
        lines.append(
            f"| {p.batch_size} | {layout} | {_number(p.images_per_second)} | {_ms(lat.p50_ms)} | {_ms(lat.p95_ms)} | "
            f"{_ms(lat.p99_ms)} | {p.cpu_cores:.2f} | {max(p.machine_cpu_cores - p.cpu_cores, 0.0):.2f} |"
        )
    best = model.onnxruntime_best()
    limit = best.images_per_second if best is not None else None
    lines += [
        "",
        "### Server",
        "",
        "| callers | batching | requests/s | images/s | of limit | p50 ms | p95 ms | p99 ms | avg batch "
        "| server CPU | generator CPU | other CPU | errors |",
        "|---:|:---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    rows: list[tuple[int, str, ServerPoint]] = []
    for sweep in model.sweeps:
        rows += [(p.concurrency, sweep.mode, p) for p in sweep.points]
    for concurrency, mode, p in sorted(rows, key=lambda row: (row[0], row[1])):
        share = f"{p.images_per_second / limit:.0%}" if limit else "-"
        errors = ", ".join(f"{code} {count}" for code, count in sorted(p.errors.items())) or "0"
        lat = p.latency
        lines.append(
            f"| {concurrency} | {MODE_TITLES.get(mode, mode)} | {_number(p.requests_per_second)} | "
            f"{_number(p.images_per_second)} | {share} | {_ms(lat.p50_ms)} | {_ms(lat.p95_ms)} | {_ms(lat.p99_ms)} | "
            f"{_number(p.average_batch_size, 1)} | {p.server_cpu_cores:.2f} | {p.generator_cpu_cores:.2f} | "
            f"{p.other_cpu_cores:.2f} | {errors} |"
        )
    lines.append("")
    if model.saturation:
        lines += [
            "### Saturation by request shape and configuration",
            "",
            "*defaults*: the batching server's flags; *throughput*: one single-threaded instance per core, with "
            "the max batch size at which bare ONNX Runtime's single-threaded sessions side by side were fastest "
            "(the largest within 2% of their best; flags below).",
            "",
            "| configuration | requests | callers | images/s | of limit | p50 ms | p99 ms | avg batch | server CPU "
            "| generator CPU | other CPU | errors |",
            "|:---|:---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
        ]
        configurations = {point.configuration: point.flags for point in model.saturation}
        for saturated in model.saturation:
            p = saturated.point
            share = f"{p.images_per_second / limit:.0%}" if limit else "-"
            errors = ", ".join(f"{code} {count}" for code, count in sorted(p.errors.items())) or "0"
            lines.append(
                f"| {saturated.configuration} | {saturated.request} | {p.concurrency} | "
                f"{_number(p.images_per_second)} | {share} | {_ms(p.latency.p50_ms)} | {_ms(p.latency.p99_ms)} | "
                f"{_number(p.average_batch_size, 1)} | {p.server_cpu_cores:.2f} | {p.generator_cpu_cores:.2f} | "
                f"{p.other_cpu_cores:.2f} | {errors} |"
            )
        lines.append("")
        for configuration, flags in configurations.items():
            shown = f"`cnnserve serve {' '.join(flags)}`" if flags else "the server's defaults"
            lines.append(f"- {configuration}: {shown}")
        lines.append("")
    return lines


def _ratios(model: ModelResult) -> list[str]:
    found = []
    best = model.onnxruntime_best()
    if best is not None:
        found.append(
            f"Bare ONNX Runtime: best {best.images_per_second:,.0f} images/s at {best.label}; "
            f"batch 1 p50 {_ms(_batch_latency(model, 1).p50_ms)} ms, p99 {_ms(_batch_latency(model, 1).p99_ms)} ms."
        )
    for mode in (BATCHING_ON, BATCHING_OFF):
        sweep = model.sweep(mode)
        served = sweep.best() if sweep is not None else None
        ratio = saturation_ratio(model, mode)
        if served is not None and ratio is not None:
            found.append(
                f"Batching {MODE_TITLES[mode]}: best {served.images_per_second:,.0f} images/s at "
                f"{served.concurrency} callers = **{ratio:.2f}** of bare ONNX Runtime's best."
            )
    overall = server_best(model)
    if overall is not None and best is not None and best.images_per_second > 0:
        point, what = overall
        found.append(
            f"Server at saturation, best of everything measured: {point.images_per_second:,.0f} images/s ({what}) "
            f"= **{point.images_per_second / best.images_per_second:.2f}** of bare ONNX Runtime's best."
        )
    on, off = model.sweep(BATCHING_ON), model.sweep(BATCHING_OFF)
    on_point = on.at(BATCHING_GAIN_CALLERS) if on is not None else None
    off_point = off.at(BATCHING_GAIN_CALLERS) if off is not None else None
    if on_point is not None and off_point is not None and off_point.requests_per_second > 0:
        gain = on_point.requests_per_second / off_point.requests_per_second
        found.append(f"Batching on / off at {BATCHING_GAIN_CALLERS} callers: **{gain:.2f}x** requests/s.")
    if model.round_trip is not None:
        found.append(
            f"gRPC round trip (health check, 1 caller): p50 {_ms(model.round_trip.p50_ms)} ms, "
            f"p99 {_ms(model.round_trip.p99_ms)} ms."
        )
    return found


def _batch_latency(model: ModelResult, batch_size: int) -> LatencySummary:
    point = model.onnxruntime_at(batch_size)
    return point.latency if point is not None else LatencySummary(None, None, None, None)
