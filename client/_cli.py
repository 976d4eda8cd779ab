"""`cnnserve classify`: argument parsing only; the client is imported when the command runs.

Exit codes: 0 every image classified, 1 some images failed, 2 usage error, 3 the server could not be reached or
refused the whole request.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg"}


def register(subcommands: argparse._SubParsersAction) -> None:
    parser = subcommands.add_parser("classify", help="classify images with a running server")
    parser.add_argument("paths", nargs="+", type=Path, metavar="PATH", help="image files or folders (recursive)")
    parser.add_argument("--server", default="127.0.0.1:8001", help="HOST:PORT (default 127.0.0.1:8001)")
    parser.add_argument("--model", required=True)
    parser.add_argument("--top-k", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds per call")
    parser.add_argument("--json", action="store_true", help="one JSON object per image per line")
    parser.set_defaults(run=_run)


def image_paths(paths: list[Path]) -> list[Path]:
    found: list[Path] = []
    for path in paths:
        if path.is_dir():
            found.extend(sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES))
        else:
            found.append(path)
    return found


def _run(args: argparse.Namespace) -> int:
    from cnnserve.client import Client, CnnserveClientError

    paths = image_paths(args.paths)
    if not paths:
        print("cnnserve classify: no images found", file=sys.stderr)
        return 2
    failures = 0
    with Client(args.server, timeout=args.timeout) as client:
        for path in paths:
            try:
                result = client.classify([path], model=args.model, top_k=args.top_k)[0]
            except CnnserveClientError as exc:
                failures += 1
                if args.json:
                    print(json.dumps({"path": str(path), "error": str(exc)}))
                else:
                    print(f"{path}: error: {exc}", file=sys.stderr)
                if getattr(exc, "code", None) is not None and exc.code.name == "UNAVAILABLE":
                    return 3
                continue
            if args.json:
                predictions = [
                    {"label": p.label, "index": p.index, "probability": p.probability} for p in result.predictions
                ]
                print(json.dumps({"path": str(path), "predictions": predictions}))
            else:
                shown = ", ".join(f"{p.label} {p.probability:.3f}" for p in result.predictions)
                print(f"{path}: {shown}")
    return 1 if failures else 0
