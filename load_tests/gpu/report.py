"""gpu_check.json (everything), gpu_check.md (the tables a reader wants) and the plots, into one folder."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from cnnserve.server.session_runner import SHAPE_CHANGE_WARNING
from load_tests.bench.shape_changes import report as shape_table
from load_tests.gpu.plots import plot_bare, plot_server
from load_tests.gpu.results import FP16_MIN_AGREEMENT, FP32_TOLERANCE, CheckResult, Correctness

JSON_FILE = "gpu_check.json"
MARKDOWN_FILE = "gpu_check.md"
BARE_PLOT = "bare_onnxruntime.png"
SERVER_PLOT = "server.png"
SHAPE_MAX_BATCH = 32
"""The largest batch of the shapes phase: the server's default max_batch_size."""


def write_reports(result: CheckResult, out: Path) -> list[Path]:
    """Write the JSON, the Markdown and (when something was measured) the plots; returns the files written."""
    out.mkdir(parents=True, exist_ok=True)
    document = asdict(result) | {"passed": not result.failures, "failures": result.failures}
    written = [out / JSON_FILE, out / MARKDOWN_FILE]
    written[0].write_text(json.dumps(document, indent=2) + "\n")
    written[1].write_text(markdown(result))
    if result.bare:
        written.append(plot_bare(result.bare, out / BARE_PLOT))
    if result.server_points:
        written.append(plot_server(result.server_points, result.bare, out / SERVER_PLOT))
    return written


def _number(value: float | None, digits: int = 0) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(row) + " |" for row in rows] + [""]


def markdown(result: CheckResult) -> str:
    machine = result.machine
    gpu = machine.get("gpu") or {}
    gpu_words = ", ".join(f"{key} {value}" for key, value in gpu.items()) or "none seen (no nvidia-smi)"
    lines = [
        "# GPU check",
        "",
        f"Command: `{result.command}`, started {result.started_at}, {result.elapsed_seconds:.0f} s of a "
        f"{result.budget_seconds:.0f} s budget, provider **{result.provider}**.",
        "",
        f"Machine: {machine.get('cpu_model', '?')}, {machine.get('logical_cpus', '?')} logical CPUs; GPU: "
        f"{gpu_words}; Python {machine.get('python', '?')}, ONNX Runtime {machine.get('onnxruntime', '?')} "
        f"(built for CUDA {machine.get('onnxruntime_cuda_version') or '-'}, from "
        f"`{machine.get('onnxruntime_file', '?')}`).",
        "",
        "CUDA libraries mapped by the measuring process: "
        + (", ".join(f"`{path}`" for path in result.cuda_libraries) or "none")
        + ".",
        "",
        "## Result",
        "",
        "**passed**" if not result.failures else "**failed**:",
        "",
        *[f"- {failure}" for failure in result.failures],
        *([""] if result.failures else []),
        "## Targets",
        "",
    ]
    lines += _table(
        ["target", "value", "threshold", "met", "from"],
        [[t.name, _number(t.value, 2), f"{t.threshold:g}", _met(t.passed), t.detail] for t in result.targets],
    )
    lines += [
        "## Correctness",
        "",
        f"The same {_images(result.correctness)} generated images through the CPU and through "
        f"{result.provider}: fp32 must agree to {FP32_TOLERANCE:g} (largest absolute difference of the raw "
        f"output), fp16's top-1 labels with the CPU's fp32 ones on at least {FP16_MIN_AGREEMENT:.0%} of them.",
        "",
    ]
    lines += _table(
        ["model", "runs on", "fp32 max abs diff", "with TF32 off", "fp16 top-1 agreement", "result"],
        [_correctness_row(c) for c in result.correctness],
    )
    if result.loading:
        lines += [
            "## Every model loaded at once",
            "",
            "A server started over every model of the repository, several times per configuration: each version "
            "must come up READY, with CUDA graphs on CUDA (versions load side by side, and a graph capture breaks "
            "when another thread uses the device meanwhile).",
            "",
        ]
        lines += _table(
            ["configuration", "start", "versions as asked", "ready after", "problems", "log"],
            [
                [
                    start.configuration,
                    str(start.start),
                    f"{start.ready} of {start.versions}",
                    f"{start.seconds:.1f} s" if start.seconds else "-",
                    "; ".join(problem.splitlines()[0] for problem in start.problems) or "-",
                    start.log,
                ]
                for start in result.loading
            ],
        )
    lines += _bare_section(result)
    if result.shape_costs:
        lines += [
            "## Changes of batch shape",
            "",
            "The same batch sizes through the server's runner, padded to one shape or to the next power of two "
            "(the shape changing from batch to batch): why CUDA batches run at one shape by default.",
            "",
            shape_table(result.shape_costs, SHAPE_MAX_BATCH),
            "",
        ]
    lines += _server_section(result)
    if result.frontend_sweep_table:
        lines += ["## Front-ends under h2load", "", result.frontend_sweep_table, ""]
    if result.skipped:
        lines += ["## Not measured", ""] + [f"- {s.what}: {s.reason}" for s in result.skipped] + [""]
    return "\n".join(lines).rstrip() + "\n"


def _met(passed: bool | None) -> str:
    return "not evaluated" if passed is None else ("yes" if passed else "**no**")


def _images(results: list[Correctness]) -> str:
    return str(max((c.images for c in results), default=0))


def _correctness_row(c: Correctness) -> list[str]:
    fp16 = c.fp16_error or (f"{c.fp16_agreement:.1%}" if c.fp16_agreement is not None else "-")
    verdict = "ok" if c.passed else "**failed**"
    diff = "-" if c.max_abs_diff is None else f"{c.max_abs_diff:.2e}"
    no_tf32 = "-" if c.no_tf32_max_abs_diff is None else f"{c.no_tf32_max_abs_diff:.2e}"
    return [c.model, c.provider or "-", diff, no_tf32, fp16, verdict]


def _bare_section(result: CheckResult) -> list[str]:
    lines = ["## Bare ONNX Runtime", "", "Images/s per batch size, one session, runs back to back.", ""]
    for model in dict.fromkeys(p.model for p in result.bare):
        points = [p for p in result.bare if p.model == model]
        variants = list(dict.fromkeys(p.variant for p in points))
        sizes = sorted({p.batch_size for p in points})
        by_key = {(p.variant, p.batch_size): p for p in points}
        rows = []
        for size in sizes:
            cells = [by_key.get((variant, size)) for variant in variants]
            rows.append([str(size), *[_number(c.images_per_second) if c else "-" for c in cells]])
        lines += [f"### {model}", "", *_table(["batch", *variants], rows)]
    return lines


def _server_section(result: CheckResult) -> list[str]:
    lines = ["## Server", ""]
    rows = []
    for m in result.server_points:
        p = m.point
        gpu = f"{m.gpu.mean_utilization:.0f}%" if m.gpu else "-"
        rows.append(
            [
                m.configuration,
                m.model,
                m.request,
                _number(p.requests_per_second),
                _number(p.images_per_second),
                _number(p.latency.p50_ms, 2),
                _number(p.latency.p99_ms, 2),
                _number(p.average_batch_size, 1),
                gpu,
                f"{p.server_cpu_cores:.2f}",
                f"{p.generator_cpu_cores:.2f}",
                str(sum(p.errors.values())),
            ]
        )
    header = ["configuration", "model", "request", "req/s", "images/s", "p50 ms", "p99 ms", "avg batch"]
    lines += _table([*header, "GPU busy", "server CPU", "generator CPU", "errors"], rows)
    lines += ["### Server runs", ""]
    lines += _table(
        ["configuration", "status", "flags", "ready after", "GetModel says", "note"],
        [
            [
                run.configuration,
                run.status,
                f"`{' '.join(run.flags)}`",
                "-" if run.ready_seconds is None else f"{run.ready_seconds:.1f} s",
                ", ".join(f"{model}: {provider}" for model, provider in run.execution_providers.items()) or "-",
                run.reason.splitlines()[0] if run.reason else _shape_warning(run.ready_lines),
            ]
            for run in result.servers
        ],
    )
    return lines


def _shape_warning(lines: list[str]) -> str:
    """The server's warning of costly changes of batch shape, from its first words to its first colon."""
    for line in lines:
        at = line.find(SHAPE_CHANGE_WARNING)
        if at >= 0:
            return "warned: " + line[at:].split(":", 1)[0]
    return ""
