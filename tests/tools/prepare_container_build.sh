#!/usr/bin/env bash
# Prepares a machine for tests/deploy/test_container_images.py, which builds and runs the images in deploy/docker
# with no container registry: only Debian's archive and PyPI are needed, once.
#
#   1. Debian's docker.io (dockerd and a client with BuildKit) and mmdebstrap, installed with apt if missing.
#   2. dockerd, started in the background (log: /tmp/cnnserve-dockerd.log) unless one already answers.
#   3. A stand-in base image: Debian bookworm (Python 3.11) made by mmdebstrap, cached as a tarball, then
#      `docker import`ed. It replaces python:3.11-slim, nvidia/cuda and busybox, which cannot be pulled.
#   4. A wheel folder for the images' Python (CPython 3.11, manylinux x86_64): the CPU image's requirements, the
#      CUDA image's onnxruntime-gpu and the build backend. Cached; imported as an image the builds mount at
#      /wheels (the Dockerfiles' WHEELS_IMAGE build argument, with PIP_NO_INDEX=1).
#   5. A probe build that uses both, then the state file the test reads (KEY=VALUE lines).
#   Also Podman (optional: its test skips without it), for `podman kube play` of the Kubernetes manifests.
#
# Idempotent: a second run reuses the cached tarball, wheels and images and the running dockerd. Needs root for
# steps 1 and 2 (CI runs as root). Everything goes to the log; on failure it says so loudly, exits 1 and
# writes no state file, so the test skips naming the log.
#
# Environment: CNNSERVE_CONTAINER_CACHE (default /var/cache/cnnserve-ci), CNNSERVE_CONTAINER_LOG,
# CNNSERVE_CONTAINER_STATE (defaults under /tmp; the test reads the same variable), CNNSERVE_DEBIAN_MIRROR.
set -euo pipefail

REPO=$(cd "$(dirname "$0")/../.." && pwd)
CACHE=${CNNSERVE_CONTAINER_CACHE:-/var/cache/cnnserve-ci}
LOG=${CNNSERVE_CONTAINER_LOG:-/tmp/cnnserve-container-build.log}
STATE=${CNNSERVE_CONTAINER_STATE:-/tmp/cnnserve-container-build.env}
MIRROR=${CNNSERVE_DEBIAN_MIRROR:-http://deb.debian.org/debian}
DOCKERD_LOG=/tmp/cnnserve-dockerd.log
DOCKERD_PID_FILE=/tmp/cnnserve-dockerd.pid
SUITE=bookworm # its python3 is 3.11, the version the project and the images use
# The essential set plus what the images need: python (with venv), groupadd/useradd (passwd), libstdc++ (grpcio,
# onnxruntime). No apt: like python:3.11-slim, less what the images do not use.
BASE_PACKAGES=python3,python3-venv,python-is-python3,passwd,libstdc++6,ca-certificates
BASE_OPTIONS=(--variant=essential --include="$BASE_PACKAGES"
  --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-exclude=/usr/share/man/*'
  --dpkgopt='path-exclude=/usr/share/locale/*')
# Named after what makes it, so that a change of packages or options makes a new one.
BASE_KEY=$(echo "$SUITE ${BASE_OPTIONS[*]}" | sha256sum | cut -c1-8)
BASE_TAR=$CACHE/base-$SUITE-$BASE_KEY.tar
BASE_IMAGE=cnnserve-ci/base:$SUITE-$BASE_KEY
WHEELS=$CACHE/wheels

exec 3>&1 4>&2 # the console; everything else goes to the log
rm -f "$STATE"
: >"$LOG"
exec >>"$LOG" 2>&1

say() { echo "prepare_container_build: $*" >&3; echo "== $*"; }

fail() {
  echo "FAILED: $*"
  {
    echo
    echo "!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!"
    echo "!! prepare_container_build FAILED: $*"
    echo "!! tests/deploy/test_container_images.py will SKIP. Full log: $LOG; last lines:"
    tail -n 15 "$LOG" | sed 's/^/!!   /'
    echo "!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!"
    echo
  } >&4
  exit 1
}

step_started=0
begin() { step_started=$SECONDS; echo "== $* ($(date -u +%H:%M:%S))"; }
took() { echo "$((SECONDS - step_started))s"; }

apt_install() {
  [ "$(id -u)" = 0 ] || fail "not root: cannot apt-get install $*"
  local install=(env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$@")
  "${install[@]}" || { apt-get update -q && "${install[@]}"; } || fail "apt-get install $* did not work"
}

# --- 1. packages ------------------------------------------------------------------------------------------
begin packages
packages=()
[ -x /usr/bin/docker ] && command -v dockerd >/dev/null || packages+=(docker.io)
command -v mmdebstrap >/dev/null || packages+=(mmdebstrap)
command -v eatmydata >/dev/null || packages+=(eatmydata) # dpkg without fsync: a faster base
[ ${#packages[@]} = 0 ] || apt_install "${packages[@]}"
# The client that builds with BuildKit: Debian's (a `docker` earlier on PATH may lack the buildx plugin).
DOCKER=/usr/bin/docker
export DOCKER_BUILDKIT=1
# Debian after bookworm packages BuildKit for the client as a plugin of its own (bookworm has no such package).
if ! "$DOCKER" buildx version >/dev/null 2>&1 && apt-cache show docker-buildx >/dev/null 2>&1; then
  apt_install docker-buildx
fi
# Podman, for `podman kube play` of the Kubernetes manifests: optional, its test skips without it.
PODMAN=/usr/bin/podman
if ! [ -x "$PODMAN" ] || ! command -v catatonit >/dev/null; then
  # catatonit: the pause process of a pod's infra container.
  env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends podman catatonit runc \
    || { echo "podman could not be installed: the kube play test will skip"; PODMAN=""; }
fi
packages_time=$(took)

# --- 2. dockerd -------------------------------------------------------------------------------------------
begin dockerd
if ! "$DOCKER" info >/dev/null 2>&1; then
  [ "$(id -u)" = 0 ] || fail "no docker daemon answers, and only root can start one"
  # setsid: the daemon outlives this script (the test needs it) and CI's signals to this process group.
  setsid dockerd >"$DOCKERD_LOG" 2>&1 </dev/null &
  echo $! >"$DOCKERD_PID_FILE"  # so that .ci/run can stop the daemon it did not find running
  for _ in $(seq 60); do
    "$DOCKER" info >/dev/null 2>&1 && break
    sleep 0.5
  done
  "$DOCKER" info >/dev/null 2>&1 || { tail -n 20 "$DOCKERD_LOG"; fail "dockerd did not start (log: $DOCKERD_LOG)"; }
fi
"$DOCKER" info --format 'dockerd {{.ServerVersion}}, storage driver {{.Driver}}'
dockerd_time=$(took)

# --- 3 and 4, at once: the base tarball (mostly apt and dpkg) and the wheels (mostly downloads) ----------------
mkdir -p "$CACHE" "$WHEELS"

make_base_tar() {
  [ -s "$BASE_TAR" ] && { echo "base: cached $BASE_TAR"; return 0; }
  find "$CACHE" -maxdepth 1 -name 'base-*.tar' -delete # made with other options
  local partial="${BASE_TAR%.tar}.partial.tar" # mmdebstrap picks its output format from the name
  rm -rf "$partial"
  mmdebstrap "${BASE_OPTIONS[@]}" --hook-dir=/usr/share/mmdebstrap/hooks/eatmydata "$SUITE" "$partial" "$MIRROR" \
    && mv "$partial" "$BASE_TAR"
}

pip_python() {
  # Any Python with pip does: it downloads for the images' Python (3.11, manylinux x86_64), not its own.
  local candidate
  for candidate in "$REPO/.venv/bin/python" python3; do
    if "$candidate" -m pip --version >/dev/null 2>&1; then echo "$candidate"; return 0; fi
  done
  [ -x "$CACHE/pip-venv/bin/python" ] || python3 -m venv "$CACHE/pip-venv" >&2 || return 1
  echo "$CACHE/pip-venv/bin/python"
}

download_wheels() {
  local python build_requires ort_gpu platforms=()
  python=$(pip_python) || { echo "no Python with pip, and python3 -m venv failed"; return 1; }
  build_requires=$("$python" -c 'import sys, tomllib; print(*tomllib.load(open(sys.argv[1], "rb"))["build-system"]["requires"], sep="\n")' "$REPO/pyproject.toml")
  ort_gpu=$(sed -n 's/^ARG ONNXRUNTIME_GPU_VERSION=//p' "$REPO/deploy/docker/Dockerfile.cuda")
  [ -n "$ort_gpu" ] || { echo "no ONNXRUNTIME_GPU_VERSION in Dockerfile.cuda"; return 1; }
  # glibc 2.36 is bookworm's: manylinux wheels up to manylinux_2_36 run there.
  for minor in $(seq 17 36); do platforms+=(--platform "manylinux_2_${minor}_x86_64"); done
  local download=("$python" -m pip download --disable-pip-version-check --only-binary=:all: --python-version 3.11
    --implementation cp "${platforms[@]}" --platform manylinux2014_x86_64 --dest "$WHEELS"
    -r "$REPO/deploy/docker/requirements-cpu.txt" "onnxruntime-gpu==$ort_gpu")
  mapfile -t build_requires <<<"$build_requires"
  # Offline first: a complete cache needs no index at all.
  "${download[@]}" "${build_requires[@]}" --no-index --find-links "$WHEELS" -q >/dev/null 2>&1 \
    && { echo "wheels: cached $WHEELS"; return 0; }
  "${download[@]}" "${build_requires[@]}"
}

timed() { # timed NAME COMMAND...: runs COMMAND with its output in $CACHE/.NAME.log, its seconds in .NAME.time
  local started=$SECONDS status=0
  "${@:2}" >"$CACHE/.$1.log" 2>&1 || status=$?
  echo "$((SECONDS - started))s" >"$CACHE/.$1.time"
  return "$status"
}

begin "base tarball and wheels"
timed base make_base_tar &
base_pid=$!
timed wheels download_wheels &
wheels_pid=$!
base_ok=0 wheels_ok=0
wait "$base_pid" || base_ok=$?
wait "$wheels_pid" || wheels_ok=$?
base_time=$(cat "$CACHE/.base.time") wheels_time=$(cat "$CACHE/.wheels.time")
echo "-- base ($base_time)"; cat "$CACHE/.base.log"
echo "-- wheels ($wheels_time)"; grep -v 'is ignored: it is' "$CACHE/.wheels.log" || true
# (The failed step's own last lines again, so that they end the log that `fail` quotes.)
[ "$base_ok" = 0 ] || { tail -n 12 "$CACHE/.base.log"; fail "mmdebstrap $SUITE did not work"; }
[ "$wheels_ok" = 0 ] || { tail -n 12 "$CACHE/.wheels.log"; fail "pip download of the images' wheels did not work"; }

# --- the two images: imported once per content ----------------------------------------------------------------
begin "docker import"
if ! "$DOCKER" image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
  "$DOCKER" import --message "stand-in base: mmdebstrap $SUITE $BASE_PACKAGES" "$BASE_TAR" "$BASE_IMAGE" \
    || fail "docker import of $BASE_TAR"
fi
wheels_hash=$(find "$WHEELS" -name '*.whl' -printf '%f\n' | sort | sha256sum | cut -c1-12)
WHEELS_IMAGE=cnnserve-ci/wheels:$wheels_hash
if ! "$DOCKER" image inspect "$WHEELS_IMAGE" >/dev/null 2>&1; then
  tar -C "$WHEELS" -c . | "$DOCKER" import - "$WHEELS_IMAGE" || fail "docker import of $WHEELS"
fi
# Those made with other packages, options or wheels before: nothing uses them any more.
"$DOCKER" images --format '{{.Repository}}:{{.Tag}}' | grep -E '^cnnserve-ci/(base|wheels):' \
  | grep -vxF -e "$BASE_IMAGE" -e "$WHEELS_IMAGE" | xargs -r "$DOCKER" rmi || true
# The test's builds leave BuildKit's cache behind (a rerun reuses it); what no build used for a day goes.
"$DOCKER" builder prune --force --filter until=24h || true
import_time=$(took)

# --- 5. probe: BuildKit, the base's Python and the wheel mount, as the Dockerfiles use them ----------------------
begin probe
probe_out=$(mktemp -d)
trap 'rm -rf "$probe_out"' EXIT
"$DOCKER" build --progress=plain --output "type=local,dest=$probe_out" - <<EOF || fail "the probe build did not work"
FROM $BASE_IMAGE AS probe
RUN --mount=type=bind,from=$WHEELS_IMAGE,target=/wheels \
    python -c "import sys, venv; assert sys.version_info[:2] == (3, 11), sys.version" \
    && ls /wheels | grep '^onnxruntime-' > /probe.txt
FROM scratch
COPY --from=probe /probe.txt /
EOF
[ -s "$probe_out/probe.txt" ] || fail "the probe build saw no onnxruntime wheel under /wheels"
probe_time=$(took)

# Podman's configuration for the test (CONTAINERS_CONF; the machine's own stays as it is): runc, because crun
# fails here, and ulimits that runc may set (Podman's defaults for root, above this machine's hard limits, fail).
CONTAINERS_CONF=$CACHE/containers.conf
if [ -n "$PODMAN" ]; then
  cat >"$CONTAINERS_CONF" <<EOF
[containers]
default_ulimits = ["nofile=4096:4096", "nproc=4096:4096"]
[engine]
runtime = "runc"
EOF
fi

cat >"$STATE.partial" <<EOF
DOCKER=$DOCKER
DOCKER_BUILDKIT=1
BASE_IMAGE=$BASE_IMAGE
WHEELS_IMAGE=$WHEELS_IMAGE
PODMAN=$PODMAN
CONTAINERS_CONF=$CONTAINERS_CONF
EOF
mv "$STATE.partial" "$STATE"
say "ready in $((SECONDS))s (packages $packages_time, dockerd $dockerd_time, base $base_time, wheels $wheels_time," \
  "import $import_time, probe $probe_time); state: $STATE, log: $LOG"
