"""The Grafana dashboard and the Prometheus alert rules, checked against the real server and a real Prometheus.

promtool and prometheus come from Debian's `prometheus` package (`apt-get install prometheus`, which .ci/run
does); the tests that need them are skipped with that reason where they are absent. Prometheus runs here as a
plain process on a loopback port with its own temporary config and data folder, never as a system service.
"""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from cnnserve.export import render_x
from cnnserve.v1 import classifier_pb2 as pb
from cnnserve.v1 import classifier_pb2_grpc as pb_grpc
from tests.conftest import png_bytes
from tests.servers import ServerProcess, channel_to

yaml = pytest.importorskip("yaml")

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
DASHBOARD = DEPLOY / "grafana" / "cnnserve-dashboard.json"
PROMETHEUS = DEPLOY / "prometheus"
ALERTS = PROMETHEUS / "alerts.yaml"
METRIC_NAME = re.compile(r"\b(?:cnnserve|process|python)_[a-z_]+\b")
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$job": ".*", "$model": ".*"}
"""What Grafana would put in place of its variables, for running the dashboard's queries on Prometheus."""
INSTALL = "apt-get install prometheus (Debian's package has prometheus and promtool)"


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} is not installed: {INSTALL}")
    return path


def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def panels(board: dict[str, Any]) -> list[dict[str, Any]]:
    return [panel for panel in board["panels"] if panel["type"] != "row"]


def dashboard_queries() -> list[str]:
    return [target["expr"] for panel in panels(dashboard()) for target in panel["targets"]]


def alert_rules() -> list[dict[str, Any]]:
    return [rule for group in yaml.safe_load(ALERTS.read_text())["groups"] for rule in group["rules"]]


def grafana_to_promql(expr: str) -> str:
    for variable, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(variable, value)
    return expr


def send_traffic(server: ServerProcess) -> None:
    """One good and one bad call, so every cnnserve series (histograms, error codes) exists."""
    with channel_to(server) as channel:
        stub = pb_grpc.ImageClassifierStub(channel)
        stub.Classify(pb.ClassifyRequest(model="xo", images=[pb.Image(encoded=png_bytes(render_x()))]), timeout=10)
        with pytest.raises(grpc.RpcError):
            stub.Classify(pb.ClassifyRequest(model="xo", images=[pb.Image(encoded=b"not an image")]), timeout=10)


def exported_samples(server: ServerProcess) -> dict[str, float]:
    """Sample name -> summed value, from one scrape of the server's /metrics."""
    with urllib.request.urlopen(server.metrics_url, timeout=10) as response:
        text = response.read().decode()
    totals: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            totals[sample.name] = totals.get(sample.name, 0.0) + sample.value
    return totals


# --- the files on their own ----------------------------------------------------------------------------


def test_alert_rules_pass_promtool_check_rules() -> None:
    result = subprocess.run(
        [tool("promtool"), "check", "rules", str(ALERTS)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_alert_rules_fire_when_and_only_when_their_unit_tests_say() -> None:
    result = subprocess.run(
        [tool("promtool"), "test", "rules", "alerts.test.yaml"],
        cwd=PROMETHEUS,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_example_prometheus_config_is_valid() -> None:
    result = subprocess.run(
        [tool("promtool"), "check", "config", str(PROMETHEUS / "prometheus.yml")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_alerts_cover_queue_wait_errors_and_readiness() -> None:
    rules = {rule["alert"]: rule for rule in alert_rules()}
    assert "cnnserve_queue_wait_seconds_bucket" in rules["CnnserveHighQueueWait"]["expr"]
    assert "cnnserve_requests_total" in rules["CnnserveHighErrorRate"]["expr"]
    assert "cnnserve_model_ready" in rules["CnnserveModelNotReady"]["expr"]
    for rule in rules.values():
        assert rule["labels"]["severity"] in {"warning", "critical"}
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]
        assert "for" in rule, f"{rule['alert']} would fire on a single bad evaluation"


def test_the_dashboard_answers_each_question_operators_ask() -> None:
    board = dashboard()
    queries = {panel["title"]: " ".join(t["expr"] for t in panel["targets"]) for panel in panels(board)}

    def panel_with(*fragments: str) -> bool:
        return any(all(fragment in query for fragment in fragments) for query in queries.values())

    assert panel_with("rate(cnnserve_requests_total"), "throughput"
    for quantile in ("0.5", "0.95", "0.99"):
        assert panel_with(f"histogram_quantile({quantile}", "cnnserve_request_duration_seconds_bucket"), quantile
    assert panel_with("cnnserve_queue_wait_seconds", "cnnserve_batch_compute_seconds"), "queue wait vs compute"
    heatmaps = [p for p in panels(board) if p["type"] == "heatmap"]
    assert any("cnnserve_batch_size_bucket" in t["expr"] for p in heatmaps for t in p["targets"]), "batch sizes"
    assert panel_with("cnnserve_inferences_total", "cnnserve_executions_total"), "average batch size"
    assert panel_with("sum by (model) (cnnserve_queue_depth"), "queue depth per model"
    assert panel_with("sum by (model, reason) (rate(cnnserve_rejections_total"), "rejections per model"
    assert panel_with("cnnserve_model_ready"), "model readiness"


def test_the_dashboard_is_well_formed_grafana_json() -> None:
    board = dashboard()
    assert board["uid"] and board["title"] and isinstance(board["schemaVersion"], int)
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    ids = [panel["id"] for panel in board["panels"]]
    assert len(ids) == len(set(ids)), "panel ids are unique"
    cells: set[tuple[int, int]] = set()
    for panel in board["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24, panel["title"]
        covered = {
            (x, y) for x in range(grid["x"], grid["x"] + grid["w"]) for y in range(grid["y"], grid["y"] + grid["h"])
        }
        assert not covered & cells, f"{panel['title']} overlaps another panel"
        cells |= covered
    for panel in panels(board):
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert panel["targets"] and panel["description"], panel["title"]
        for target in panel["targets"]:
            assert target["expr"].count("(") == target["expr"].count(")"), target["expr"]
            if "cnnserve_" in target["expr"]:
                assert 'model=~"$model"' in target["expr"], f"{panel['title']} ignores the model selector"


# --- against the real server ---------------------------------------------------------------------------


def test_the_dashboard_and_alerts_use_only_metrics_the_server_exports(server: ServerProcess) -> None:
    send_traffic(server)
    exported = set(exported_samples(server))
    used = {name for query in dashboard_queries() for name in METRIC_NAME.findall(query)}
    used |= {name for rule in alert_rules() for name in METRIC_NAME.findall(rule["expr"])}
    assert used, "the patterns found no metric names at all"
    assert used - exported == set(), f"not exported by the server: {sorted(used - exported)}"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextmanager
def running_prometheus(target: str, workdir: Path, ready_timeout: float = 60) -> Iterator[str]:
    """Prometheus scraping `target` every second with deploy/prometheus's config and alert rules; yields its URL."""
    config = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())
    config["global"] = {"scrape_interval": "1s", "evaluation_interval": "1s"}
    config["rule_files"] = [str(ALERTS)]
    (job,) = config["scrape_configs"]
    job["static_configs"] = [{"targets": [target]}]
    config_file = workdir / "prometheus.yml"
    config_file.write_text(yaml.safe_dump(config))
    address = f"127.0.0.1:{free_port()}"
    log_path = workdir / "prometheus.log"
    with log_path.open("w") as log:
        process = subprocess.Popen(
            [
                tool("prometheus"),
                f"--config.file={config_file}",
                f"--storage.tsdb.path={workdir / 'data'}",
                f"--web.listen-address={address}",
                "--log.level=warn",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    url = f"http://{address}"
    try:
        deadline = time.monotonic() + ready_timeout
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"prometheus exited with {process.returncode}:\n{log_path.read_text()}")
            try:
                with urllib.request.urlopen(f"{url}/-/ready", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"prometheus not ready after {ready_timeout}s:\n{log_path.read_text()}")
            time.sleep(0.1)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def api(url: str, path: str, **params: str) -> Any:
    query = f"?{urllib.parse.urlencode(params)}" if params else ""
    with urllib.request.urlopen(f"{url}/api/v1/{path}{query}", timeout=10) as response:
        answer = json.loads(response.read())
    assert answer["status"] == "success", answer
    return answer["data"]


def query(url: str, promql: str) -> list[dict[str, Any]]:
    return api(url, "query", query=promql)["result"]


def eventually(check: Callable[[], Any], what: str, timeout: float = 30) -> Any:
    """Poll `check` until it returns something truthy (Prometheus scrapes and evaluates on its own clock)."""
    deadline = time.monotonic() + timeout
    while True:
        found = check()
        if found:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"Prometheus never reported {what} within {timeout}s")
        time.sleep(0.25)


@pytest.mark.skipif(shutil.which("prometheus") is None, reason=f"prometheus is not installed: {INSTALL}")
def test_a_real_prometheus_scrapes_the_server_runs_the_dashboard_and_evaluates_the_alerts(
    server: ServerProcess, tmp_path: Path
) -> None:
    send_traffic(server)
    served = exported_samples(server)
    with running_prometheus(f"127.0.0.1:{server.metrics_port}", tmp_path) as url:
        eventually(lambda: query(url, 'up{job="cnnserve"} == 1'), "the server's target up")

        def requests_in_prometheus() -> bool:
            result = query(url, "sum(cnnserve_requests_total)")
            return bool(result) and float(result[0]["value"][1]) == served["cnnserve_requests_total"]

        eventually(requests_in_prometheus, "the request count the server exports")
        eventually(
            lambda: query(url, 'count_over_time(up{job="cnnserve"}[1m]) >= 3'), "three scrapes, enough for rate()"
        )
        for expr in dashboard_queries():
            assert query(url, grafana_to_promql(expr)), f"the dashboard query returns no series: {expr}"

        def rules_evaluated() -> list[dict[str, Any]]:
            rules = [rule for group in api(url, "rules")["groups"] for rule in group["rules"]]
            return rules if rules and all(rule["health"] == "ok" for rule in rules) else []

        rules = eventually(rules_evaluated, "every alert rule evaluated without error")
        assert {rule["name"] for rule in rules} == {rule["alert"] for rule in alert_rules()}
        alerts = api(url, "alerts")["alerts"]
        assert not [a for a in alerts if a["labels"]["alertname"] == "CnnserveModelNotReady"], "every model is ready"
