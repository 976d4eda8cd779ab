"""What `cnnserve classify`, `explain`, `models` and `health` do, once their flags are parsed (`_cli` has the exit
codes).

Results go to stdout (human lines or JSON lines); errors, the progress bar and, with --json, the summary go to
stderr, so that stdout can be piped into another program.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from cnnserve.client._cli import ExitCode
from cnnserve.client._client import Client
from cnnserve.client._config import TLSConfig
from cnnserve.client._exceptions import CnnserveClientError, ImageError, InvalidInput, StatusError
from cnnserve.client._progress import ProgressBar
from cnnserve.client._types import ClassifyOutcome, Explanation, HealthStatus, ModelInfo

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"})


def image_paths(paths: Iterable[Path]) -> list[Path]:
    """Files as given, and the image files (`IMAGE_SUFFIXES`) under folders (recursively, sorted, hidden files
    skipped)."""
    found: list[Path] = []
    for path in paths:
        if path.is_dir():
            found.extend(
                sorted(
                    p
                    for p in path.rglob("*")
                    if p.suffix.lower() in IMAGE_SUFFIXES
                    and p.is_file()
                    and not any(part.startswith(".") for part in p.relative_to(path).parts)
                )
            )
        else:
            found.append(path)
    return found


def client_from_args(args: argparse.Namespace) -> Client:
    """The client the connection flags describe; raises ValueError for bad settings, OSError for a TLS file that
    cannot be read."""
    tls = None
    if args.tls or args.tls_ca or args.tls_cert or args.tls_key or args.tls_server_name:
        tls = TLSConfig(ca=args.tls_ca, cert=args.tls_cert, key=args.tls_key, server_name=args.tls_server_name)
    return Client(args.server, timeout=args.timeout, tls=tls, auth_token=args.auth_token)


def _connect(command: str, args: argparse.Namespace) -> Client | None:
    try:
        return client_from_args(args)
    except (OSError, ValueError) as exc:
        _error(command, str(exc))
        return None


def run_classify(args: argparse.Namespace) -> ExitCode:
    paths = image_paths(args.paths)
    if not paths:
        _error(
            "classify",
            "no PNG or JPEG images (nor WebP, BMP, GIF or TIFF) found in " + ", ".join(str(p) for p in args.paths),
        )
        return ExitCode.USAGE
    client = _connect("classify", args)
    if client is None:
        return ExitCode.USAGE
    with client:
        try:
            model = client.model(args.model)
        except CnnserveClientError as exc:
            _error("classify", f"cannot use model {args.model!r} on {args.server}: {exc}")
            return ExitCode.SERVER_ERROR
        if args.top_k > len(model.labels):
            _error("classify", f"--top-k {args.top_k}: model {model.name} has only {len(model.labels)} labels")
            return ExitCode.USAGE
        outcomes = client.classify_many(
            paths, model=args.model, top_k=args.top_k, concurrency=args.concurrency, batch_size=args.batch_size
        )
        summary = _report(outcomes, len(paths), as_json=args.json)
    summary.print(sys.stderr if args.json else sys.stdout)
    return summary.exit_code()


@dataclasses.dataclass
class ClassifySummary:
    """Counts for the table printed at the end, and the exit code they mean."""

    total: int
    labels: Counter[str] = dataclasses.field(default_factory=Counter)
    image_failures: int = 0
    server_failures: int = 0
    started: float = dataclasses.field(default_factory=time.monotonic)

    def add(self, outcome: ClassifyOutcome) -> None:
        if outcome.classification is not None:
            self.labels[outcome.classification.label] += 1
        elif isinstance(outcome.error, ImageError | InvalidInput):
            self.image_failures += 1
        else:
            self.server_failures += 1

    def exit_code(self) -> ExitCode:
        if self.server_failures:
            return ExitCode.SERVER_ERROR
        return ExitCode.SOME_FAILED if self.image_failures else ExitCode.OK

    def print(self, stream: TextIO) -> None:
        classified = sum(self.labels.values())
        rows = [(label, str(count), f"{count / classified:.1%}") for label, count in self.labels.most_common()]
        if self.image_failures:
            rows.append(("failed (image)", str(self.image_failures), ""))
        if self.server_failures:
            rows.append(("failed (server)", str(self.server_failures), ""))
        _table(("label", "images", "share"), rows, stream)
        seconds = time.monotonic() - self.started
        print(f"{classified} of {self.total} images classified in {seconds:.2f} s", file=stream)


def _report(outcomes: Iterator[ClassifyOutcome], total: int, *, as_json: bool) -> ClassifySummary:
    summary = ClassifySummary(total)
    progress = ProgressBar(total if total > 1 else 0, sys.stderr)
    shares_the_terminal = progress.enabled and sys.stdout.isatty()
    try:
        for outcome in outcomes:
            summary.add(outcome)
            if shares_the_terminal or (outcome.error is not None and not as_json):
                progress.clear()
            if as_json:
                print(json.dumps(_outcome_json(outcome)), flush=shares_the_terminal)
            elif outcome.classification is not None:
                shown = ", ".join(f"{p.label} {p.probability:.3f}" for p in outcome.classification.predictions)
                print(f"{outcome.source}: {shown}", flush=shares_the_terminal)
            else:
                print(f"{outcome.source}: error: {outcome.error}", file=sys.stderr)
            progress.advance()
    finally:
        progress.close()
    return summary


def _outcome_json(outcome: ClassifyOutcome) -> dict[str, Any]:
    answer: dict[str, Any] = {"path": str(outcome.source)}
    if outcome.classification is not None:
        result = outcome.classification
        answer.update(model=result.model, version=result.version, label=result.label)
        answer["predictions"] = [dataclasses.asdict(p) for p in result.predictions]
    else:
        answer["error"] = {"code": _error_code(outcome.error), "message": str(outcome.error)}
    return answer


def _error_code(error: CnnserveClientError | None) -> str:
    if isinstance(error, StatusError):
        return str(error.code.name)
    return "IMAGE_ERROR" if isinstance(error, ImageError) else "CLIENT_ERROR"


def run_explain(args: argparse.Namespace) -> ExitCode:
    """Explain one image and write the files asked for; output folders are checked before the (long) call."""
    activations = args.method == "activations"
    if activations and args.npy is not None:
        _error("explain", "--npy: method activations draws feature maps and makes no saliency map; use --png")
        return ExitCode.USAGE
    for path in (args.png, args.npy):
        if path is not None and not path.parent.is_dir():
            _error("explain", f"cannot write {path}: there is no folder {path.parent}")
            return ExitCode.USAGE
    client = _connect("explain", args)
    if client is None:
        return ExitCode.USAGE
    try:
        with client:
            explanation = client.explain(
                args.image,
                model=args.model,
                version=args.version,
                label=args.label,
                method=args.method,
                patch=args.patch,
                stride=args.stride,
                masks=args.masks,
                cells=args.cells,
                keep=args.keep,
                seed=args.seed,
                max_rows=args.max_rows,
                overlay_png=args.png is not None and not activations,
                layer=args.layer,
                timeout=args.timeout,
            )
    except ValueError as exc:
        _error("explain", str(exc))
        return ExitCode.USAGE
    except (ImageError, InvalidInput) as exc:
        _error("explain", f"{args.image}: {exc}")
        return ExitCode.SOME_FAILED
    except CnnserveClientError as exc:
        _error("explain", f"{args.server}: {exc}")
        return ExitCode.SERVER_ERROR
    _print_explanation(args.image, explanation)
    return _write_explanation(explanation, png=args.png, npy=args.npy)


def _print_explanation(image: Path, explanation: Explanation) -> None:
    print(
        f"{image}: {explanation.label} {explanation.probability:.3f} (model {explanation.model} version "
        f"{explanation.version})"
    )
    saliency = explanation.saliency
    if saliency is None:
        print(f"{explanation.method}: {explanation.rows} forward passes, layer {explanation.layer}")
        return
    height, width = saliency.shape
    print(
        f"{explanation.method}: {explanation.rows} forward passes, saliency {height}x{width} from "
        f"{float(saliency.min()):.3g} to {float(saliency.max()):.3g}"
    )


def _write_explanation(explanation: Explanation, *, png: Path | None, npy: Path | None) -> ExitCode:
    """Write the map (exactly at `npy`: numpy.save would add a suffix to a bare path) and the overlay, or the
    feature maps of an activations answer (which has no map, so `npy` is refused before the call)."""
    try:
        if npy is not None and explanation.saliency is not None:
            with npy.open("wb") as file:
                np.save(file, explanation.saliency)
            print(f"wrote {npy} (saliency, float32 {list(explanation.saliency.shape)})")
        if png is not None and explanation.activations_png is not None:
            png.write_bytes(explanation.activations_png)
            print(f"wrote {png} (feature maps of layer {explanation.layer})")
        elif png is not None:
            if explanation.overlay_png is None:
                _error("explain", "the server sent no overlay although one was asked for")
                return ExitCode.SERVER_ERROR
            png.write_bytes(explanation.overlay_png)
            print(f"wrote {png} (overlay)")
    except OSError as exc:
        _error("explain", f"cannot write {exc.filename}: {exc.strerror or exc}")
        return ExitCode.USAGE
    return ExitCode.OK


def run_models(args: argparse.Namespace) -> ExitCode:
    client = _connect("models", args)
    if client is None:
        return ExitCode.USAGE
    try:
        with client:
            models = client.models()
    except CnnserveClientError as exc:
        _error("models", f"{args.server}: {exc}")
        return ExitCode.SERVER_ERROR
    if args.json:
        for model in models:
            print(json.dumps(dataclasses.asdict(model)))
    else:
        header: tuple[str, ...] = ("name", "ready", "versions", "input", "labels", "provider")
        rows = [_model_row(m) for m in models]
        if any(m.activation_layers for m in models):
            header += ("activations",)
            rows = [(*row, ",".join(m.activation_layers)) for row, m in zip(rows, models, strict=True)]
        _table(header, rows)
    return ExitCode.OK


def _model_row(model: ModelInfo) -> tuple[str, ...]:
    spec = model.input
    sides = (
        (spec.height, spec.width, spec.channels) if spec.layout == "NHWC" else (spec.channels, spec.height, spec.width)
    )
    shape = f"{'x'.join(str(side) for side in sides)} {spec.color}"
    providers = sorted(
        {
            f"{v.execution_provider} ({v.precision})" if v.precision == "fp16" else v.execution_provider
            for v in model.versions
            if v.execution_provider
        }
    )
    versions = ",".join(str(v.version) for v in model.versions)
    return model.name, "yes" if model.ready else "no", versions, shape, str(len(model.labels)), ",".join(providers)


def run_health(args: argparse.Namespace) -> ExitCode:
    client = _connect("health", args)
    if client is None:
        return ExitCode.USAGE
    try:
        with client:
            status = client.health(args.service)
    except CnnserveClientError as exc:
        _error("health", f"{args.server}: {exc}")
        return ExitCode.SERVER_ERROR
    print(status.value)
    return ExitCode.OK if status is HealthStatus.SERVING else ExitCode.SOME_FAILED


def _table(header: tuple[str, ...], rows: Sequence[tuple[str, ...]], stream: TextIO | None = None) -> None:
    """Columns padded to their widest cell; numbers right-aligned."""
    out = stream or sys.stdout
    widths = [max(len(cell) for cell in column) for column in zip(header, *rows, strict=True)]
    for row in (header, *rows):
        cells = [
            cell.rjust(width) if _is_number(cell) else cell.ljust(width)
            for cell, width in zip(row, widths, strict=True)
        ]
        print("  ".join(cells).rstrip(), file=out)


def _is_number(cell: str) -> bool:
    return bool(cell) and cell.rstrip("%").replace(".", "", 1).replace(",", "").isdigit()


def _error(command: str, message: str) -> None:
    print(f"cnnserve {command}: {message}", file=sys.stderr)
