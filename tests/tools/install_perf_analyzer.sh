#!/usr/bin/env bash
# Install Triton's perf_analyzer for tests/server/test_perf_analyzer.py, then print the binary's path.
#
# perf_analyzer ships inside the tritonclient wheel up to 2.47.0 (later wheels lack it), so that wheel is
# downloaded into build/perf_analyzer/ and only the binary is unpacked from it: the venv keeps its newer
# tritonclient. The binary links libb64 (Debian's libb64-0d, installed here when missing; that needs root) and
# libcudart.so.12 even where no GPU is used (unpacked into lib/ from PyPI's nvidia-cuda-runtime-cu12), so run it
# with LD_LIBRARY_PATH=build/perf_analyzer/lib. Idempotent: once installed, a run only checks and prints the path.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
dest="${PERF_ANALYZER_DIR:-$root/build/perf_analyzer}"
python="${PYTHON:-python3}"
tritonclient="tritonclient==2.47.0"
cuda_runtime="nvidia-cuda-runtime-cu12==12.9.79"

if ! dpkg -s libb64-0d >/dev/null 2>&1; then
  if [ "$(id -u)" != "0" ]; then
    echo "perf_analyzer needs Debian's libb64-0d; as root: apt-get install libb64-0d" >&2
    exit 1
  fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends libb64-0d
fi

if [ ! -x "$dest/bin/perf_analyzer" ] || [ ! -e "$dest/lib/libcudart.so.12" ]; then
  mkdir -p "$dest/wheels" "$dest/bin" "$dest/lib"
  "$python" -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
    --platform "manylinux2014_$(uname -m)" --dest "$dest/wheels" "$tritonclient" "$cuda_runtime"
  # Unpack one member of a wheel (a zip file) with Python, which every machine here has, unlike unzip.
  "$python" - "$dest" <<'EOF'
import shutil
import sys
import zipfile
from pathlib import Path

dest = Path(sys.argv[1])
wanted = {"/bin/perf_analyzer": dest / "bin/perf_analyzer", "/lib/libcudart.so.12": dest / "lib/libcudart.so.12"}
for wheel in sorted((dest / "wheels").glob("*.whl")):
    with zipfile.ZipFile(wheel) as archive:
        for member in archive.namelist():
            for suffix, target in wanted.items():
                if member.endswith(suffix):
                    with archive.open(member) as source, open(target, "wb") as out:
                        shutil.copyfileobj(source, out)
                    target.chmod(0o755)
missing = [str(target) for target in wanted.values() if not target.exists()]
if missing:
    sys.exit(f"not found in the downloaded wheels: {', '.join(missing)}")
EOF
fi

if ! LD_LIBRARY_PATH="$dest/lib" "$dest/bin/perf_analyzer" --version >/dev/null 2>&1; then
  echo "$dest/bin/perf_analyzer is installed but does not start:" >&2
  LD_LIBRARY_PATH="$dest/lib" ldd "$dest/bin/perf_analyzer" | grep "not found" >&2 || true
  exit 1
fi
echo "$dest/bin/perf_analyzer"
