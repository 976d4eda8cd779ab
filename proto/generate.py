"""Regenerate the Python modules for every .proto under proto/ into the repository root.

The generated modules are committed (so installing cnnserve needs no code generator) and
`tests/test_proto_stubs.py` regenerates them into a temporary folder and fails when they differ.
Run with `make proto` after editing a .proto file.
"""

from __future__ import annotations

import argparse
import sys
from importlib.resources import files
from pathlib import Path

from grpc_tools import protoc

PROTO_ROOT = Path(__file__).resolve().parent
REPOSITORY_ROOT = PROTO_ROOT.parent


def proto_files() -> list[Path]:
    return sorted(PROTO_ROOT.rglob("*.proto"))


def generate(out_dir: Path) -> None:
    """Write `*_pb2.py`, `*_pb2.pyi` and `*_pb2_grpc.py` for every proto file under `out_dir`."""
    well_known = str(files("grpc_tools") / "_proto")
    sources = [str(path.relative_to(PROTO_ROOT)) for path in proto_files()]
    status = protoc.main(
        [
            "protoc",
            f"-I{PROTO_ROOT}",
            f"-I{well_known}",
            f"--python_out={out_dir}",
            f"--pyi_out={out_dir}",
            f"--grpc_python_out={out_dir}",
            *sources,
        ]
    )
    if status != 0:
        raise SystemExit(f"protoc failed with status {status}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPOSITORY_ROOT, help="default: the repository root")
    args = parser.parse_args()
    generate(args.out)
    print(f"generated {len(proto_files())} proto file(s) into {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
