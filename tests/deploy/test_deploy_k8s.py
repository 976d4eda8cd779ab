"""The Kubernetes manifests: each overlay renders, validates against the Kubernetes schemas, and keeps the
invariants the server's contract depends on (probes on the gRPC port, non-root, limits, a grace period
longer than the drain, selectors that select). Each invariant is a function returning its violations, and
is also run on a deliberately broken copy, so the tests are seen to fail."""

from __future__ import annotations

import copy
import re
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

yaml = pytest.importorskip("yaml")
kubernetes_validate = pytest.importorskip(
    "kubernetes_validate", reason="kubernetes-validate is not installed: pip install kubernetes-validate"
)
jsonschema = pytest.importorskip("jsonschema")

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
K8S = DEPLOY / "k8s"
OVERLAYS = ("cpu", "gpu", "tls")
# The oldest Kubernetes the manifests support (native preStop sleep, beta and on by default since 1.30)
# and the newest kubernetes-validate knows.
KUBERNETES_VERSIONS = ("1.30.0", "1.37.0")
CUSTOM_RESOURCES = {("monitoring.coreos.com/v1", "ServiceMonitor")}
MIN_STARTUP_SECONDS = 120

Objects = list[dict[str, Any]]


# --- helpers -------------------------------------------------------------------------------------------


def find(objects: Objects, kind: str, name: str | None = None) -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]


def only(objects: Objects, kind: str, name: str | None = None) -> dict[str, Any]:
    found = find(objects, kind, name)
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def pod_spec(objects: Objects) -> dict[str, Any]:
    return only(objects, "Deployment", "cnnserve")["spec"]["template"]["spec"]


def server(objects: Objects) -> dict[str, Any]:
    (container,) = [c for c in pod_spec(objects)["containers"] if c["name"] == "server"]
    return container


def server_settings(objects: Objects) -> dict[str, str]:
    """The CNNSERVE_* settings the server container gets, through envFrom ConfigMaps and env."""
    settings: dict[str, str] = {}
    container = server(objects)
    for source in container.get("envFrom", []):
        name = source["configMapRef"]["name"]
        settings.update(only(objects, "ConfigMap", name)["data"])
    for var in container.get("env", []):
        if "value" in var:
            settings[var["name"]] = var["value"]
    return settings


def matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(key) == value for key, value in selector.items())


def container_port(objects: Objects, name: str) -> int:
    (port,) = [p["containerPort"] for p in server(objects)["ports"] if p["name"] == name]
    return port


# --- invariants: each returns a list of violations -------------------------------------------------------


def probe_problems(objects: Objects) -> list[str]:
    """gRPC probes on the gRPC port; with TLS on (native gRPC probes cannot speak it), KServe's REST health
    paths over HTTP on the metrics port."""
    problems = []
    settings = server_settings(objects)
    grpc_port = container_port(objects, "grpc")
    if str(grpc_port) != settings.get("CNNSERVE_GRPC_PORT"):
        problems.append(f"container port grpc {grpc_port} is not CNNSERVE_GRPC_PORT")
    metrics_port = container_port(objects, "metrics")
    if str(metrics_port) != settings.get("CNNSERVE_METRICS_PORT"):
        problems.append(f"container port metrics {metrics_port} is not CNNSERVE_METRICS_PORT")
    tls = "CNNSERVE_TLS_CERT" in settings
    container = server(objects)
    for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
        probe = container.get(kind)
        path = "/v2/health/live" if kind == "livenessProbe" else "/v2/health/ready"
        if probe is None:
            problems.append(f"{kind} missing")
        elif tls and (probe.get("httpGet", {}).get("port") not in ("metrics", metrics_port) or "grpc" in probe):
            problems.append(f"{kind} must be an HTTP probe on the metrics port when TLS is on: {probe}")
        elif tls and probe["httpGet"].get("path") != path:
            problems.append(f"{kind} must ask {path}: {probe}")
        elif not tls and probe.get("grpc", {}).get("port") != grpc_port:
            problems.append(f"{kind} is not a gRPC probe on port {grpc_port}: {probe}")
    startup = container.get("startupProbe", {})
    budget = startup.get("periodSeconds", 10) * startup.get("failureThreshold", 3)
    if budget < MIN_STARTUP_SECONDS:
        problems.append(f"startupProbe allows {budget}s for model loading, less than {MIN_STARTUP_SECONDS}s")
    return problems


def security_problems(objects: Objects) -> list[str]:
    problems = []
    spec = pod_spec(objects)
    pod = spec.get("securityContext", {})
    if pod.get("runAsNonRoot") is not True or pod.get("runAsUser", 0) == 0:
        problems.append(f"pod is not non-root: {pod}")
    if spec.get("automountServiceAccountToken") is not False:
        problems.append("service account token is mounted")
    for container in spec["containers"] + spec.get("initContainers", []):
        context = container.get("securityContext", {})
        name = container["name"]
        if context.get("runAsUser") == 0 or context.get("runAsNonRoot") is False:
            problems.append(f"{name} runs as root")
        if context.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{name} allows privilege escalation")
        if context.get("readOnlyRootFilesystem") is not True:
            problems.append(f"{name} root filesystem is writable")
        if context.get("privileged"):
            problems.append(f"{name} is privileged")
        if context.get("capabilities", {}).get("drop") != ["ALL"] or context["capabilities"].get("add"):
            problems.append(f"{name} does not drop all capabilities")
    return problems


def resource_problems(objects: Objects, gpu: bool) -> list[str]:
    problems = []
    spec = pod_spec(objects)
    for container in spec["containers"] + spec.get("initContainers", []):
        resources = container.get("resources", {})
        for bound in ("requests", "limits"):
            missing = {"cpu", "memory"} - set(resources.get(bound, {}))
            if missing:
                problems.append(f"{container['name']} has no {bound} for {sorted(missing)}")
    limits = server(objects).get("resources", {}).get("limits", {})
    if gpu:
        if str(limits.get("nvidia.com/gpu")) != "1":
            problems.append("gpu overlay does not limit nvidia.com/gpu to 1")
        if not any(t.get("key") == "nvidia.com/gpu" for t in spec.get("tolerations", [])):
            problems.append("gpu overlay does not tolerate the nvidia.com/gpu taint")
        if not spec.get("nodeSelector"):
            problems.append("gpu overlay has no node selector")
    elif "nvidia.com/gpu" in limits or spec.get("tolerations"):
        problems.append("cpu overlay asks for a GPU")
    return problems


def shutdown_problems(objects: Objects) -> list[str]:
    """Grace period > preStop delay + drain; liveness must not restart a pod while it drains."""
    problems = []
    drain = int(server_settings(objects).get("CNNSERVE_DRAIN_TIMEOUT", "20"))
    container = server(objects)
    pre_stop = container.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
    if pre_stop < 1:
        problems.append("no preStop delay for endpoint removal to propagate")
    grace = pod_spec(objects).get("terminationGracePeriodSeconds", 30)
    if grace <= pre_stop + drain:
        problems.append(f"terminationGracePeriodSeconds {grace} <= preStop {pre_stop} + drain {drain}")
    liveness = container.get("livenessProbe", {})
    tolerated = liveness.get("periodSeconds", 10) * liveness.get("failureThreshold", 3)
    if tolerated <= drain:
        problems.append(f"liveness gives up after {tolerated}s of NOT_SERVING, within the {drain}s drain")
    return problems


def selector_problems(objects: Objects) -> list[str]:
    problems = []
    deployment = only(objects, "Deployment", "cnnserve")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    if not matches(deployment["spec"]["selector"]["matchLabels"], pod_labels):
        problems.append("Deployment selector does not match its pod template")
    for service in find(objects, "Service"):
        if not matches(service["spec"]["selector"], pod_labels):
            problems.append(f"Service {service['metadata']['name']} selects no server pod")
        port_names = {p["name"] for p in server(objects)["ports"]}
        for port in service["spec"]["ports"]:
            if port["targetPort"] not in port_names and port["targetPort"] not in {
                p["containerPort"] for p in server(objects)["ports"]
            }:
                problems.append(f"Service port {port['name']} targets no container port")
    for kind in ("PodDisruptionBudget",):
        for obj in find(objects, kind):
            if not matches(obj["spec"]["selector"]["matchLabels"], pod_labels):
                problems.append(f"{kind} selects no server pod")
    for policy in find(objects, "NetworkPolicy"):
        if not matches(policy["spec"]["podSelector"]["matchLabels"], pod_labels):
            problems.append("NetworkPolicy selects no server pod")
    for hpa in find(objects, "HorizontalPodAutoscaler"):
        target = hpa["spec"]["scaleTargetRef"]
        if (target["kind"], target["name"]) != ("Deployment", deployment["metadata"]["name"]):
            problems.append(f"HPA targets {target}")
    account = pod_spec(objects).get("serviceAccountName")
    if account and not find(objects, "ServiceAccount", account):
        problems.append(f"ServiceAccount {account} is not rendered")
    return problems


def service_problems(objects: Objects) -> list[str]:
    problems = []
    grpc_port = container_port(objects, "grpc")
    cluster_ip = only(objects, "Service", "cnnserve")
    headless = only(objects, "Service", "cnnserve-headless")
    if cluster_ip["spec"].get("type", "ClusterIP") != "ClusterIP" or cluster_ip["spec"].get("clusterIP") == "None":
        problems.append("cnnserve is not a ClusterIP Service")
    if headless["spec"].get("clusterIP") != "None":
        problems.append("cnnserve-headless is not headless")
    for service in (cluster_ip, headless):
        grpc = [p for p in service["spec"]["ports"] if p["name"] == "grpc"]
        if not grpc or grpc[0].get("appProtocol") != "grpc" or grpc[0]["port"] != grpc_port:
            problems.append(f"{service['metadata']['name']} has no port grpc/{grpc_port} with appProtocol grpc")
    if not any(p["name"] == "metrics" for p in cluster_ip["spec"]["ports"]):
        problems.append("cnnserve has no port named metrics")
    return problems


def network_policy_problems(objects: Objects) -> list[str]:
    policy = only(objects, "NetworkPolicy", "cnnserve")
    problems = []
    if "Ingress" not in policy["spec"].get("policyTypes", []):
        problems.append("NetworkPolicy does not restrict ingress")
    allowed = set()
    for rule in policy["spec"].get("ingress", []):
        if not rule.get("ports"):
            problems.append("an ingress rule allows every port")
        for port in rule.get("ports", []):
            by_name = {p["name"]: p["containerPort"] for p in server(objects)["ports"]}
            allowed.add(by_name.get(port["port"], port["port"]))
    expected = {container_port(objects, "grpc"), container_port(objects, "metrics")}
    if allowed != expected:
        problems.append(f"NetworkPolicy allows ports {sorted(allowed)}, not exactly {sorted(expected)}")
    return problems


def volume_problems(objects: Objects) -> list[str]:
    """The server writes nothing but /tmp; the model repository is mounted read-only where it is read."""
    problems = []
    settings = server_settings(objects)
    if settings.get("CNNSERVE_HOST") != "0.0.0.0":
        problems.append("CNNSERVE_HOST is not 0.0.0.0: probes and peers could not reach the server")
    mounts = {m["mountPath"]: m for m in server(objects).get("volumeMounts", [])}
    repository = settings.get("CNNSERVE_MODEL_REPOSITORY")
    if repository not in mounts or not mounts[repository].get("readOnly"):
        problems.append(f"model repository {repository} is not a read-only volume mount")
    writable = sorted(path for path, mount in mounts.items() if not mount.get("readOnly"))
    if writable != ["/tmp"]:
        problems.append(f"writable mounts are {writable}, not just /tmp")
    return problems


SERVICE_MONITOR_SCHEMA = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "additionalProperties": False,
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "ServiceMonitor"},
        "metadata": {
            "type": "object",
            "required": ["name"],
            "properties": {
                "name": {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"},
                "labels": {"type": "object", "additionalProperties": {"type": "string"}},
            },
        },
        "spec": {
            "type": "object",
            "required": ["selector", "endpoints"],
            "additionalProperties": False,
            "properties": {
                "selector": {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["matchLabels"],
                    "properties": {
                        "matchLabels": {
                            "type": "object",
                            "minProperties": 1,
                            "additionalProperties": {"type": "string"},
                        }
                    },
                },
                "endpoints": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "required": ["port"],
                        "additionalProperties": False,
                        "properties": {
                            "port": {"type": "string"},
                            "path": {"type": "string", "pattern": "^/"},
                            "scheme": {"enum": ["http", "https"]},
                            "interval": {"type": "string", "pattern": r"^\d+(ms|s|m|h)$"},
                            "scrapeTimeout": {"type": "string", "pattern": r"^\d+(ms|s|m|h)$"},
                        },
                    },
                },
            },
        },
    },
}


def service_monitor_problems(objects: Objects) -> list[str]:
    """A structural check of the ServiceMonitor (a CRD, absent from kubernetes-validate's schemas)."""
    monitor = only(objects, "ServiceMonitor", "cnnserve")
    validator = jsonschema.Draft202012Validator(SERVICE_MONITOR_SCHEMA)
    problems = [f"{list(e.path)}: {e.message}" for e in validator.iter_errors(monitor)]
    if problems:
        return problems
    selected = [
        s
        for s in find(objects, "Service")
        if matches(monitor["spec"]["selector"]["matchLabels"], s["metadata"].get("labels", {}))
    ]
    names = [s["metadata"]["name"] for s in selected]
    for endpoint in monitor["spec"]["endpoints"]:
        scraped = [s for s in selected if endpoint["port"] in {p["name"] for p in s["spec"]["ports"]}]
        if len(scraped) != 1:
            problems.append(f"endpoint {endpoint['port']} scrapes Services {names}, not exactly one")
    return problems


def autoscaling_problems(objects: Objects) -> list[str]:
    problems = []
    hpa = only(objects, "HorizontalPodAutoscaler", "cnnserve")
    spec = hpa["spec"]
    if spec.get("minReplicas", 1) < 2:
        problems.append("minReplicas < 2: one pod cannot be drained without an outage")
    if spec["maxReplicas"] <= spec.get("minReplicas", 1):
        problems.append("maxReplicas leaves no room to scale")
    kinds = {m["type"]: m for m in spec.get("metrics", [])}
    if kinds.get("Resource", {}).get("resource", {}).get("name") != "cpu":
        problems.append("HPA does not scale on CPU")
    rules = yaml.safe_load((K8S / "prometheus-adapter" / "values.yaml").read_text())["rules"]["custom"]
    published = {rule["name"]["as"]: rule for rule in rules}
    pods_metric = kinds.get("Pods", {}).get("pods", {}).get("metric", {}).get("name")
    rule = published.get(pods_metric)
    if rule is None:
        problems.append(f"HPA Pods metric {pods_metric} is published by no prometheus-adapter rule")
    elif "cnnserve_queue_wait_seconds" not in rule["seriesQuery"]:
        problems.append(f"{pods_metric} is not computed from cnnserve_queue_wait_seconds")
    if "replicas" in only(objects, "Deployment", "cnnserve")["spec"]:
        problems.append("Deployment sets replicas: re-applying it would undo the autoscaler")
    return problems


INVARIANTS: dict[str, Callable[[Objects], list[str]]] = {
    "probes": probe_problems,
    "security": security_problems,
    "shutdown": shutdown_problems,
    "selectors": selector_problems,
    "services": service_problems,
    "network_policy": network_policy_problems,
    "volumes": volume_problems,
    "service_monitor": service_monitor_problems,
    "autoscaling": autoscaling_problems,
}


# --- tests ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
@pytest.mark.parametrize("invariant", INVARIANTS)
def test_overlay_keeps_invariant(rendered, overlay: str, invariant: str) -> None:
    assert INVARIANTS[invariant](rendered[overlay]) == []


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_sets_resources(rendered, overlay: str) -> None:
    assert resource_problems(rendered[overlay], gpu=overlay == "gpu") == []


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_renders_every_object(rendered, overlay: str) -> None:
    kinds = sorted(o["kind"] for o in rendered[overlay])
    assert kinds == sorted(
        [
            "ConfigMap",
            "Deployment",
            "HorizontalPodAutoscaler",
            "NetworkPolicy",
            "PodDisruptionBudget",
            "Service",
            "Service",
            "ServiceAccount",
            "ServiceMonitor",
        ]
    )
    variant = {o["metadata"]["labels"].get("app.kubernetes.io/variant") for o in rendered[overlay]}
    assert variant == {overlay}


def test_overlays_use_their_own_image(rendered) -> None:
    assert server(rendered["cpu"])["image"].endswith("-cpu")
    assert server(rendered["gpu"])["image"].endswith("-cuda")
    assert server(rendered["tls"])["image"].endswith("-cpu")


def test_selectors_stay_as_written(rendered) -> None:
    """Overlay labels reach metadata and pod templates but never a selector, which is immutable."""
    for overlay in OVERLAYS:
        deployment = only(rendered[overlay], "Deployment", "cnnserve")
        assert "app.kubernetes.io/variant" not in deployment["spec"]["selector"]["matchLabels"]
        assert deployment["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/variant"] == overlay


@pytest.mark.parametrize("overlay", OVERLAYS)
@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_objects_validate_against_kubernetes_schemas(rendered, overlay: str, version: str) -> None:
    errors = []
    for obj in rendered[overlay]:
        if (obj["apiVersion"], obj["kind"]) in CUSTOM_RESOURCES:
            continue  # checked structurally by service_monitor_problems
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as error:
            path = ".".join(str(p) for p in error.path)
            errors.append(f"{obj['kind']}/{obj['metadata']['name']}: {path}: {error.message}")
        except kubernetes_validate.SchemaNotFoundError as error:
            errors.append(f"{obj['kind']}/{obj['metadata']['name']}: {error.message}")
    assert errors == []


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_kubernetes_validate_cli_strict(rendered, tool, overlay: str, tmp_path) -> None:
    """The command operators run: `kubernetes-validate --strict` on the rendered overlay."""
    validate = tool("kubernetes-validate")
    manifest = tmp_path / f"{overlay}.yaml"
    manifest.write_text(yaml.safe_dump_all(rendered[overlay]))
    versions = [arg for v in KUBERNETES_VERSIONS for arg in ("-k", v)]
    result = subprocess.run(
        [validate, "--strict", "--quiet", *versions, str(manifest)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "ERROR" not in result.stdout
    warned = set(re.findall(r"kind (\w+) with api version (\S+)", result.stdout))
    assert warned <= {(kind, api) for api, kind in CUSTOM_RESOURCES}


def test_base_renders_on_its_own(render) -> None:
    objects = render(K8S / "base")
    problems = {name: check(objects) for name, check in INVARIANTS.items()}
    assert {name: found for name, found in problems.items() if found} == {}


# --- the checks themselves can fail --------------------------------------------------------------------


def _broken(objects: Objects, edit: Callable[[Objects], None]) -> Objects:
    broken = copy.deepcopy(objects)
    edit(broken)
    return broken


BREAKAGES: dict[str, tuple[Callable[[Objects], list[str]], Callable[[Objects], None]]] = {
    "http probe": (probe_problems, lambda o: server(o)["readinessProbe"].update(grpc={"port": 8002})),
    "short startup": (probe_problems, lambda o: server(o)["startupProbe"].update(failureThreshold=3)),
    "root": (security_problems, lambda o: pod_spec(o)["securityContext"].update(runAsUser=0)),
    "writable root": (
        security_problems,
        lambda o: server(o)["securityContext"].update(readOnlyRootFilesystem=False),
    ),
    "short grace": (shutdown_problems, lambda o: pod_spec(o).update(terminationGracePeriodSeconds=20)),
    "long drain": (
        shutdown_problems,
        lambda o: only(o, "ConfigMap")["data"].update(CNNSERVE_DRAIN_TIMEOUT="60"),
    ),
    "selector": (
        selector_problems,
        lambda o: only(o, "Service", "cnnserve")["spec"]["selector"].update(app="other"),
    ),
    "open port": (
        network_policy_problems,
        lambda o: only(o, "NetworkPolicy")["spec"]["ingress"].append({"ports": [{"port": 22}]}),
    ),
    "double scrape": (
        service_monitor_problems,
        lambda o: (
            only(o, "Service", "cnnserve-headless")["metadata"]["labels"].update({"cnnserve.io/scrape": "true"})
            or only(o, "Service", "cnnserve-headless")["spec"]["ports"].append(
                {"name": "metrics", "port": 8002, "targetPort": "metrics"}
            )
        ),
    ),
    "monitor typo": (
        service_monitor_problems,
        lambda o: only(o, "ServiceMonitor")["spec"]["endpoints"][0].update(intervall="15s"),
    ),
    "writable models": (
        volume_problems,
        lambda o: server(o)["volumeMounts"][0].update(readOnly=False),
    ),
    "unknown metric": (
        autoscaling_problems,
        lambda o: only(o, "HorizontalPodAutoscaler")["spec"]["metrics"][1]["pods"]["metric"].update(name="nope"),
    ),
}


@pytest.mark.parametrize("breakage", BREAKAGES)
def test_invariant_catches(rendered, breakage: str) -> None:
    check, edit = BREAKAGES[breakage]
    assert check(rendered["cpu"]) == []
    assert check(_broken(rendered["cpu"], edit)) != []


def test_a_grpc_probe_under_tls_is_caught(rendered) -> None:
    def grpc_readiness(objects: Objects) -> None:
        server(objects)["readinessProbe"] = {"grpc": {"port": 8001}, "periodSeconds": 5}

    assert probe_problems(rendered["tls"]) == []
    assert probe_problems(_broken(rendered["tls"], grpc_readiness)) != []


def test_missing_gpu_limit_is_caught(rendered) -> None:
    broken = _broken(rendered["gpu"], lambda o: server(o)["resources"]["limits"].pop("nvidia.com/gpu"))
    assert resource_problems(broken, gpu=True) != []
    assert resource_problems(rendered["cpu"], gpu=True) != []


def test_strict_schema_validation_rejects_unknown_fields(rendered) -> None:
    broken = _broken(rendered["cpu"], lambda o: server(o).update(readinesProbe={"grpc": {"port": 8001}}))
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(only(broken, "Deployment"), KUBERNETES_VERSIONS[0], strict=True)


def test_readme_documents_every_overlay() -> None:
    readme = (DEPLOY / "README.md").read_text()
    for overlay in OVERLAYS:
        assert f"deploy/k8s/overlays/{overlay}" in readme
