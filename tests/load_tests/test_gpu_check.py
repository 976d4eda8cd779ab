"""The GPU check without a GPU: its CPU dry run end to end, and the parts of its preparation that need no network.

The dry run (`--provider cpu --no-install`) goes through every step that does not need CUDA: the re-execution
into the measuring stage, the CPU-versus-provider comparison of every model (a seed model and an imported plain
ONNX model), fp16 conversion, bare ONNX Runtime with and without IO binding, every server configuration this
server supports, the targets and the three kinds of report. Speed is not asserted (the machine is shared).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from cnnserve.server.model_import import import_model
from cnnserve.server.spec_files import SpecTables
from load_tests.bench.h2load import INSTALL_HINT
from load_tests.gpu.bare import VARIANTS, measure_variant
from load_tests.gpu.budget import Budget
from load_tests.gpu.cli import parse_options
from load_tests.gpu.environment import (
    DEADLINE_VARIABLE,
    STAGE_VARIABLE,
    Interpreter,
    install_command,
    measuring_environment,
)
from load_tests.gpu.wheelhouse import WheelhouseError, carry_batches, join_parts, split_file
from load_tests.gpu_wheels import bundle_h2load, download_command, project_dependencies
from tests.plain_models import classifier_graph, save, write_labels

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def check_repository(model_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """mnist_net as cnnserve exported it, and a plain ONNX classifier brought in by `cnnserve import`."""
    root = tmp_path_factory.mktemp("gpu-check-models")
    shutil.copytree(model_repository / "mnist_net", root / "mnist_net")
    sources = tmp_path_factory.mktemp("plain-source")
    graph = save(classifier_graph(size=(24, 24), channels=3, final="Softmax"), sources / "plain.onnx")
    import_model(graph, root, "plain", write_labels(sources / "labels.txt", 4), SpecTables())
    return root


@pytest.fixture(scope="module")
def dry_run(check_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    """The dry run as `make gpu-check` would start it (the script as a file); its stderr and output folder."""
    out = tmp_path_factory.mktemp("gpu-check-out")
    command = [sys.executable, "load_tests/gpu_check.py", "--provider", "cpu", "--no-install"]
    command += ["--models", str(check_repository), "--out", str(out), "--wheels", str(out / "no-wheels")]
    completed = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=110, check=False)
    assert completed.returncode == 0, completed.stderr[-4000:]
    return completed.stderr, out


@pytest.mark.slow
@pytest.mark.timeout(120)
@pytest.mark.skipif(shutil.which("h2load") is None, reason=f"the check's front-end sweep needs h2load: {INSTALL_HINT}")
def test_the_dry_run_checks_every_model_and_measures_every_way(dry_run: tuple[str, Path]) -> None:
    progress, out = dry_run
    assert "using this interpreter as it is" in progress and "correctness plain on CPUExecutionProvider" in progress
    report = json.loads((out / "gpu_check.json").read_text())
    assert report["passed"] is True and report["failures"] == [] and report["provider"] == "cpu"

    correctness = {c["model"]: c for c in report["correctness"]}
    assert set(correctness) == {"mnist_net", "plain"}
    for result in correctness.values():
        assert result["provider"] == "CPUExecutionProvider" and result["max_abs_diff"] == 0.0
        assert result["images"] == 64 and result["fp16_agreement"] >= 0.98

    # Every model at once, as CUDA graphs need checking (on the CPU the setting applies to nothing): one start each.
    loading = [(run["configuration"], run["ready"], run["versions"], run["problems"]) for run in report["loading"]]
    assert loading == [("cuda_graphs", 2, 2, []), ("cuda_graphs_fp16", 2, 2, [])]

    variants = {point["variant"] for point in report["bare"]}
    assert variants == {"fp32 run", "fp32 io_binding", "fp16 run", "fp16 io_binding"}
    assert {point["batch_size"] for point in report["bare"]} == {1, 2, 4, 8, 16, 32, 64, 128, 256}
    assert all(point["model"] == "mnist_net" and point["images_per_second"] > 0 for point in report["bare"])
    costs = report["shape_costs"]
    assert [(cost["model"], cost["search"]) for cost in costs] == [
        ("mnist_net", "exhaustive"),
        ("mnist_net", "heuristic"),
    ]
    assert all(cost["one_shape_ms"] > 0 and cost["changing_shapes_ms"] > 0 for cost in costs)

    servers = {run["configuration"]: run for run in report["servers"]}
    assert servers["cuda_graphs"]["status"] == "skipped" and "CUDA" in servers["cuda_graphs"]["reason"]
    measured = [name for name, run in servers.items() if run["status"] == "measured"]
    assert {"default", "buckets", "frontends_2", "gil_switch", "frontends_2_gil_switch"} <= set(measured)
    for name in measured:
        assert servers[name]["execution_providers"] == {"mnist_net": "CPUExecutionProvider"}
        assert servers[name]["ready_lines"], "the server's own log says the model is ready, and on what"
    points = report["server_points"]
    shapes = {(p["configuration"], p["images_per_request"]) for p in points}
    assert shapes == {(name, images) for name in measured for images in (1, 16)}
    assert all(p["point"]["requests"] > 0 and p["point"]["errors"] == {} for p in points)

    targets = {target["name"]: target for target in report["targets"]}
    assert len(targets) == 4 and all(target["passed"] is not None for target in targets.values())

    # The front-end sweep under h2load (make installs nghttp2-client): the single process and 2 front-ends,
    # each beside a bare server of as many processes, with where each request's time went.
    sweep = report["frontend_sweep"]
    assert sweep is not None, f"no front-end sweep: {report['skipped']}"
    assert [row["frontends"] for row in sweep["rows"]] == [0, 2]
    for row in sweep["rows"]:
        assert row["cnnserve"]["server_successes"] > 0 and row["bare_grpc_aio"]["server_successes"] > 0
        assert row["cnnserve"]["stage_microseconds"]["compute_infer"] > 0 and row["cnnserve_processes"]
    assert '"execution_provider":"cpu"' in (out / "logs" / "cnnserve-2.log").read_text(), "the check's provider"
    for count in (0, 2):  # py-spy's run after the measured one: its samples, or why there are none
        sampled = out / "logs" / f"cnnserve-{count}-round1"
        assert sampled.with_suffix(".summary.txt").is_file() or sampled.with_suffix(".err").is_file()


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_the_dry_run_writes_the_markdown_and_the_plots(dry_run: tuple[str, Path]) -> None:
    _, out = dry_run
    markdown = (out / "gpu_check.md").read_text()
    headings = ("## Result", "## Targets", "## Correctness", "## Bare ONNX Runtime", "## Server", "### mnist_net")
    for heading in (*headings, "## Changes of batch shape", "## Every model loaded at once"):
        assert heading in markdown
    assert "| mnist_net | heuristic | CPUExecutionProvider |" in markdown
    assert "## Front-ends under h2load" in markdown and "| 0 (single process) |" in markdown
    assert "**passed**" in markdown and "| plain | CPUExecutionProvider |" in markdown
    for plot in ("bare_onnxruntime.png", "server.png", "frontends.png"):
        assert (out / plot).read_bytes().startswith(b"\x89PNG")
    assert list((out / "logs").glob("server-default.log"))


@pytest.mark.slow
def test_the_cuda_graph_way_of_running_binds_and_times_on_the_cpu_too(check_repository: Path) -> None:
    """The dry run leaves CUDA graphs out; their binding and graph-id code still runs on the CPU provider."""
    variant = next(v for v in VARIANTS if v.cuda_graph and v.precision == "fp16")
    model = check_repository / "mnist_net" / "1" / "model.onnx"
    points = measure_variant("mnist_net", model, variant, "cpu", 0, (1, 8), 0.01, on_point=lambda point: None)
    assert [(p.variant, p.batch_size) for p in points] == [("fp16 cuda_graph", 1), ("fp16 cuda_graph", 8)]
    assert all(p.runs >= 3 and p.images_per_second > 0 for p in points)


def test_the_script_runs_as_a_module_too() -> None:
    completed = subprocess.run(
        [sys.executable, "-m", "load_tests.gpu_check", "--help"], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert completed.returncode == 0 and "--provider" in completed.stdout


def test_phases_run_in_their_own_order_whatever_order_they_are_asked_in() -> None:
    options = parse_options(["--out", "out", "--phases", "frontends, correctness"])
    assert options.phases == ("correctness", "frontends")
    all_phases = ("correctness", "loading", "bare", "shapes", "server", "frontends")
    assert parse_options(["--out", "out"]).phases == all_phases
    with pytest.raises(SystemExit):
        parse_options(["--out", "out", "--phases", "correctness,warp"])


def test_the_server_phase_can_be_narrowed_to_configurations_by_name(check_repository: Path, tmp_path: Path) -> None:
    """`--servers` picks server configurations by name (a dry run, in a process of its own: the check's servers
    import the Open Inference Protocol's modules, which tritonclient's in this process would clash with)."""
    assert parse_options(["--out", "out", "--servers", "default, cuda_graphs"]).servers == ("default", "cuda_graphs")

    def dry_run(servers: str) -> dict:
        command = [sys.executable, "load_tests/gpu_check.py", "--provider", "cpu", "--no-install"]
        command += ["--models", str(check_repository), "--out", str(tmp_path / servers), "--wheels", str(tmp_path)]
        command += ["--phases", "server", "--servers", servers]
        subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=110, check=False)
        return json.loads((tmp_path / servers / "gpu_check.json").read_text())

    narrowed = dry_run("no_io_binding")
    assert [(run["configuration"], run["status"]) for run in narrowed["servers"]] == [("no_io_binding", "measured")]
    assert narrowed["passed"], narrowed["failures"]
    misnamed = dry_run("no_iobinding")
    assert not misnamed["passed"] and not misnamed["servers"]
    assert any(
        "no server configuration no_iobinding; there are default, no_io_binding" in e for e in misnamed["errors"]
    )


@pytest.mark.skipif(shutil.which("h2load") is None, reason="h2load is not installed (apt-get install nghttp2-client)")
def test_the_bundled_h2load_runs_from_its_folder_with_its_own_libraries(tmp_path: Path) -> None:
    bundle = bundle_h2load(tmp_path)
    assert bundle == tmp_path / "h2load"
    libraries = {path.name for path in (bundle / "lib").iterdir()}
    assert any(name.startswith("libnghttp2.so") for name in libraries)
    assert not any(name.startswith(("libc.so", "libstdc++", "ld-linux")) for name in libraries)
    moved = tmp_path / "elsewhere"
    bundle.rename(moved)  # the wrapper finds its binary and libraries beside itself, wherever it is
    completed = subprocess.run([str(moved / "h2load"), "--version"], capture_output=True, text=True, timeout=30)
    assert completed.returncode == 0 and completed.stdout.startswith("h2load nghttp2/")


def test_a_split_wheel_is_joined_in_name_order_and_checked(tmp_path: Path) -> None:
    wheel = tmp_path / "big-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:  # stored, so the parts are as large as the content
        archive.writestr("big/data.bin", bytes(range(256)) * 1200)
    original = wheel.read_bytes()
    parts = split_file(wheel, 100_000)
    assert [p.name.rsplit(".", 1)[1] for p in parts] == ["part-aa", "part-ab", "part-ac", "part-ad"]
    assert not wheel.exists() and all(p.stat().st_size <= 100_000 for p in parts)

    assert join_parts(tmp_path) == [wheel]
    assert wheel.read_bytes() == original
    assert join_parts(tmp_path) == [], "an intact joined wheel is not joined again"


def test_a_missing_part_is_named(tmp_path: Path) -> None:
    wheel = tmp_path / "big-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr("big/data.bin", bytes(range(256)) * 1200)
    split_file(wheel, 100_000)[1].unlink()
    with pytest.raises(WheelhouseError, match=r"joined from \S+part-aa, \S+part-ac, "):
        join_parts(tmp_path)


def test_carry_batches_fit_the_transfer_limit(tmp_path: Path) -> None:
    sizes = [60, 40, 30, 20, 5, 5, 1]
    files = []
    for index, size in enumerate(sizes):
        files.append(tmp_path / f"f{index}")
        files[-1].write_bytes(b"x" * size)
    batches = carry_batches(files, limit_bytes=64, max_paths=2)
    assert sorted(path.name for batch in batches for path in batch.paths) == sorted(f.name for f in files)
    assert all(batch.size <= 64 and len(batch.paths) <= 2 for batch in batches)
    with pytest.raises(ValueError, match="over"):
        carry_batches(files, limit_bytes=50, max_paths=8)


def test_the_downloaded_dependencies_are_pyprojects_own() -> None:
    requirements = project_dependencies(ROOT / "pyproject.toml")
    assert any(r.startswith("onnxruntime-gpu") and "sys_platform == 'linux'" in r for r in requirements)
    assert any(r.startswith("grpcio-health-checking") for r in requirements)
    command = download_command(Path("wheels"), requirements)
    assert command[command.index("--python-version") + 1] == "3.12" and "--only-binary=:all:" in command
    assert "manylinux_2_28_x86_64" in command and command[-len(requirements) :] == requirements


def test_the_install_uses_the_folder_alone(tmp_path: Path) -> None:
    for name in ("pip-26.0-py3-none-any.whl", "cnnserve-0.1.0-py3-none-any.whl"):
        (tmp_path / name).touch()
    (tmp_path / "onnxruntime_gpu-1.31.1-cp312-cp312-manylinux_2_28_x86_64.whl").touch()
    command = install_command(Path("/venv/bin/python"), tmp_path)
    assert command[1].endswith("pip-26.0-py3-none-any.whl/pip") and "--no-index" in command
    assert "onnxruntime-gpu==1.31.1" in command and "matplotlib" in command
    assert str(tmp_path / "cnnserve-0.1.0-py3-none-any.whl") in command


def test_the_cuda_libraries_of_the_nvidia_packages_go_first_on_the_library_path(tmp_path: Path) -> None:
    for library in ("cu13/lib/libcudart.so.13", "cudnn/lib/libcudnn.so.9", "cu13/include/cuda.h"):
        (tmp_path / "nvidia" / library).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "nvidia" / library).touch()
    (tmp_path / "nvidia" / "empty" / "lib").mkdir(parents=True)
    interpreter = Interpreter(Path(sys.executable), {"path": [str(tmp_path), "/nowhere"]})
    expected = [str(tmp_path / "nvidia" / "cu13" / "lib"), str(tmp_path / "nvidia" / "cudnn" / "lib")]
    assert interpreter.library_dirs() == expected

    environment = measuring_environment(interpreter, Budget.starting_now(60))
    assert environment["LD_LIBRARY_PATH"].split(":")[:2] == expected
    assert environment[STAGE_VARIABLE] == "measure" and float(environment[DEADLINE_VARIABLE]) > 0
    assert environment["PYTHONSAFEPATH"] == "1"


def test_an_interpreter_without_the_cuda_provider_is_not_used_for_cuda() -> None:
    report = {"onnxruntime": {"providers": ["CPUExecutionProvider"], "file": "/x/onnxruntime/__init__.py"}}
    interpreter = Interpreter(Path(sys.executable), {**report, "onnxruntime_gpu": None, "cnnserve": "/x"})
    assert interpreter.problems("cpu") == []
    assert "no CUDAExecutionProvider" in interpreter.problems("cuda")[0]
