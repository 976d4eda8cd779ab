"""Prepare the folder the GPU check runs from, on a machine with network and PyTorch (this checkout's venv).

    python load_tests/gpu_wheels.py --out gpu-wheels --split-mb 56      # or: make gpu-wheels

The GPU host has Python 3.12 and no network, so everything it lacks comes in one folder:

- the cnnserve wheel built from this checkout (`pip wheel --no-deps .`);
- Python 3.12 manylinux x86_64 wheels (`pip download --only-binary=:all:`) of onnxruntime-gpu at the version
  this venv has, of cnnserve's runtime dependencies as pyproject.toml lists them, of what the check itself
  needs (load_tests/gpu/environment.py, CHECK_REQUIREMENTS) and of pip, which installs them there;
- `models/`: the six seed models with random weights and one imported plain ONNX model
  (load_tests/gpu/model_repository.py);
- `h2load/`: this machine's h2load (Debian's `nghttp2-client`), for the check's front-end sweep on a host without
  it: the binary, the libraries it links beyond the C and C++ runtimes (which any x86_64 Linux host has, newer),
  and a wrapper script that runs it with them;
- with `--split-mb N`, every wheel over N MiB cut into `NAME.part-aa`, `NAME.part-ab`, ... (the check joins
  them), and CARRY.txt: the folder's files grouped so that each group fits one transfer.

Run again, it reuses what is there (joined parts included) and downloads only what is missing.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

if not __package__:  # run as a file: the checkout's `load_tests`, after the installed packages
    sys.path.append(str(Path(__file__).resolve().parent.parent))

from load_tests.gpu.environment import CHECK_REQUIREMENTS
from load_tests.gpu.wheelhouse import BUNDLED_H2LOAD, MEBIBYTE, carry_batches, join_parts, split_file, tree_size

ROOT = Path(__file__).resolve().parent.parent
PYTHON_VERSION = "3.12"
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64")
TRANSFER_MIB = 64
"""One call to the GPU host carries at most 64 MiB: the checkout's tracked files and the carried paths together."""
CARRY_MAX_PATHS = 8
CARRY_FILE = "CARRY.txt"


def carry_limit_mib(checkout: Path = ROOT) -> float:
    """What one transfer may carry beside the checkout's tracked files (which travel with every call), a MiB
    kept spare; 8 MiB are assumed for them where git cannot list them."""
    listed = subprocess.run(["git", "ls-files", "-z"], cwd=checkout, capture_output=True, check=False)
    if listed.returncode != 0:
        return TRANSFER_MIB - 8.0 - 1.0
    names = [name for name in listed.stdout.decode().split("\0") if name]
    tracked = sum((checkout / name).stat().st_size for name in names if (checkout / name).is_file())
    return TRANSFER_MIB - tracked / MEBIBYTE - 1.0


def project_dependencies(pyproject: Path) -> list[str]:
    """cnnserve's runtime requirements, markers included, exactly as pyproject.toml's [project] lists them."""
    return list(tomllib.loads(pyproject.read_text())["project"]["dependencies"])


def onnxruntime_gpu_version() -> str:
    """The onnxruntime-gpu version installed here: the GPU host gets the one the suite ran with."""
    return importlib.metadata.version("onnxruntime-gpu")


def download_command(folder: Path, requirements: list[str], python_version: str = PYTHON_VERSION) -> list[str]:
    command = [sys.executable, "-m", "pip", "download", "--disable-pip-version-check", "--only-binary=:all:"]
    command += ["--python-version", python_version, "--implementation", "cp"]
    for platform in PLATFORMS:
        command += ["--platform", platform]
    return [*command, "-d", str(folder), *requirements]


def build_cnnserve_wheel(folder: Path) -> Path:
    for old in folder.glob("cnnserve-*.whl"):
        old.unlink()
    command = [sys.executable, "-m", "pip", "wheel", "--disable-pip-version-check", "--no-deps", "-w", str(folder)]
    subprocess.run([*command, str(ROOT)], check=True)
    return next(folder.glob("cnnserve-*.whl"))


_RUNTIME_LIBRARIES = ("linux-vdso", "ld-linux", "libc.so", "libm.so", "libpthread", "libdl.so", "librt.so")
_RUNTIME_LIBRARIES += ("libstdc++", "libgcc_s")
_H2LOAD_WRAPPER = """#!/bin/sh
# h2load with the libraries bundled beside it (load_tests/gpu_wheels.py).
here=$(dirname "$(readlink -f "$0")")
LD_LIBRARY_PATH="$here/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" exec "$here/bin/h2load" "$@"
"""


def bundle_h2load(folder: Path) -> Path | None:
    """Copy this machine's h2load and the shared libraries it needs into `folder`/h2load, with a wrapper script
    `h2load` that runs it; None (and nothing written) when h2load is not installed here."""
    executable = shutil.which("h2load")
    if executable is None:
        return None
    bundle = folder / BUNDLED_H2LOAD
    shutil.rmtree(bundle, ignore_errors=True)
    (bundle / "bin").mkdir(parents=True)
    (bundle / "lib").mkdir()
    shutil.copy2(Path(executable).resolve(), bundle / "bin" / "h2load")
    linked = subprocess.run(["ldd", executable], capture_output=True, text=True, check=True).stdout
    for line in linked.splitlines():
        name, arrow, rest = line.strip().partition(" => ")
        if not arrow or name.startswith(_RUNTIME_LIBRARIES) or not rest.startswith("/"):
            continue
        shutil.copy2(Path(rest.split(" (")[0]).resolve(), bundle / "lib" / name)
    wrapper = bundle / BUNDLED_H2LOAD
    wrapper.write_text(_H2LOAD_WRAPPER)
    wrapper.chmod(0o755)
    return bundle


def write_carry_plan(folder: Path, limit_mib: float, max_paths: int) -> list[list[str]]:
    """Group the folder's wheels, parts and model repository into transfers; write them to CARRY.txt, one line
    of space-separated paths (relative to the checkout when the folder is inside it) per transfer."""
    skipped = {CARRY_FILE, "venv"}
    entries = [path for path in folder.iterdir() if path.name not in skipped and path.suffix != ".joining"]
    batches = carry_batches(entries, int(limit_mib * MEBIBYTE), max_paths)
    lines = [[_shown(path) for path in batch.paths] for batch in batches]
    header = (
        f"# {len(lines)} transfers of at most {limit_mib:.1f} MiB and {max_paths} paths each; the GPU check joins "
        "the .part-* files itself.\n"
    )
    (folder / CARRY_FILE).write_text(header + "".join(" ".join(line) + "\n" for line in lines))
    return lines


def _shown(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(ROOT))
    except ValueError:
        return str(path)


def main(argv: list[str] | None = None) -> int:
    parse = argparse.ArgumentParser(prog="gpu_wheels", description=__doc__.split("\n\n")[0])
    parse.add_argument("--out", type=Path, default=ROOT / "gpu-wheels", help="the folder to fill")
    parse.add_argument("--split-mb", type=float, default=0, help="split wheels over this many MiB into parts")
    parse.add_argument("--python-version", default=PYTHON_VERSION, help="the GPU host's Python (default 3.12)")
    parse.add_argument("--no-models", dest="models", action="store_false", help="leave out the model repository")
    parse.add_argument("--no-download", dest="download", action="store_false", help="only build, write, split")
    args = parse.parse_args(argv)
    folder: Path = args.out.resolve()
    folder.mkdir(parents=True, exist_ok=True)
    join_parts(folder)  # so that pip sees the wheels it downloaded last time
    print(f"building the cnnserve wheel into {folder}", flush=True)
    build_cnnserve_wheel(folder)
    if args.download:
        requirements = [
            *project_dependencies(ROOT / "pyproject.toml"),
            f"onnxruntime-gpu=={onnxruntime_gpu_version()}",
            *CHECK_REQUIREMENTS,
            "pip",
        ]
        print(f"downloading Python {args.python_version} wheels: {' '.join(requirements)}", flush=True)
        subprocess.run(download_command(folder, requirements, args.python_version), check=True)
    if args.models:
        from load_tests.gpu.model_repository import write_model_repository

        names = write_model_repository(folder / "models")
        print(f"model repository {folder / 'models'}: {', '.join(names)}", flush=True)
    bundle = bundle_h2load(folder)
    print(
        f"h2load bundled in {bundle}"
        if bundle
        else "h2load is not installed here: the check's front-end sweep will need it on the GPU host",
        flush=True,
    )
    if args.split_mb:
        for wheel in sorted(folder.glob("*.whl")):
            parts = split_file(wheel, int(args.split_mb * MEBIBYTE))
            if len(parts) > 1:
                print(f"split {wheel.name} into {len(parts)} parts", flush=True)
        lines = write_carry_plan(folder, carry_limit_mib(), CARRY_MAX_PATHS)
        print(f"{len(lines)} transfers, listed in {folder / CARRY_FILE}", flush=True)
    print(f"{folder}: {tree_size(folder) / MEBIBYTE:.0f} MiB", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
