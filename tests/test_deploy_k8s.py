"""deploy/k8s: both overlays render with kustomize, every object is valid for Kubernetes 1.31, and
the rendered objects have the properties of the operations contract (written out in the tests below).

No cluster runs here: `kubectl kustomize` renders, `kubernetes-validate` checks each built-in object
against the 1.31 schemas (strict: no unknown field), and the custom resources (CloudNativePG
`Cluster`, `ScheduledBackup`, KEDA `ScaledObject`) are checked against the fields their operators
document. What the manifests must agree with is read from the code: the services and their console
scripts, the sync work queue and its durable consumer, which service calls which internal API.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tomllib
from functools import cache
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from calmesh_common.devstack.migrate import SERVICES
from calmesh_common.events.connections import SYNC_JOBS_STREAM
from calmesh_common.settings import SERVICE_NAMES
from calmesh_sync.worker import CONSUMER_NAME

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "deploy" / "k8s"
KUBECTL = shutil.which("kubectl") or "/usr/bin/kubectl"
OVERLAYS = ("dev", "production")
CALMESH = [name for name, _, _ in SERVICES]  # gateway and the six services behind it
K8S_VERSION = "1.31.0"
SECRET_LIKE = re.compile(r"SECRET|PASSWORD|TOKEN|ENCRYPTION_KEYS|API_KEY|CLIENT_ID|DATABASE_URL|USERNAME")


def render(directory: Path) -> list[dict[str, Any]]:
    out = subprocess.run([KUBECTL, "kustomize", str(directory)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return [doc for doc in yaml.safe_load_all(out.stdout) if doc]


@cache
def rendered(overlay: str) -> tuple[dict[str, Any], ...]:
    return tuple(render(K8S / "overlays" / overlay))


def of_kind(objects, kind: str) -> dict[str, dict[str, Any]]:  # type: ignore[no-untyped-def]
    return {o["metadata"]["name"]: o for o in objects if o["kind"] == kind}


def pod_labels(workload: dict[str, Any]) -> dict[str, str]:
    return workload["spec"]["template"]["metadata"]["labels"]


def selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items())


# --- rendering and validation -------------------------------------------------------------------

#: Custom resources: apiVersion, kind, and the spec fields the operator documents (CloudNativePG
#: 1.24+ API reference, KEDA 2.x ScaledObject spec), with the ones that must be there.
CUSTOM = {
    ("postgresql.cnpg.io/v1", "Cluster"): (
        {"instances", "imageName", "primaryUpdateStrategy", "postgresql", "bootstrap", "storage", "walStorage",
         "resources", "affinity", "backup", "monitoring", "superuserSecret", "enableSuperuserAccess", "managed",
         "replica", "externalClusters", "description", "startDelay", "stopDelay", "switchoverDelay"},
        {"instances", "storage"},
    ),
    ("postgresql.cnpg.io/v1", "ScheduledBackup"): (
        {"schedule", "cluster", "backupOwnerReference", "immediate", "suspend", "method", "target"},
        {"schedule", "cluster"},
    ),
    ("keda.sh/v1alpha1", "ScaledObject"): (
        {"scaleTargetRef", "pollingInterval", "cooldownPeriod", "initialCooldownPeriod", "idleReplicaCount",
         "minReplicaCount", "maxReplicaCount", "fallback", "advanced", "triggers"},
        {"scaleTargetRef", "triggers"},
    ),
}
#: The nats-jetstream trigger's metadata keys (KEDA's scaler documentation).
NATS_JETSTREAM_METADATA = {"natsServerMonitoringEndpoint", "account", "stream", "consumer", "lagThreshold",
                           "activationLagThreshold", "useHttps"}


def check_custom(obj: dict[str, Any]) -> None:
    allowed, required = CUSTOM[(obj["apiVersion"], obj["kind"])]
    spec = obj["spec"]
    assert set(spec) <= allowed, f"{obj['kind']}: undocumented fields {set(spec) - allowed}"
    assert required <= set(spec), f"{obj['kind']}: missing {required - set(spec)}"
    if obj["kind"] == "Cluster":
        assert isinstance(spec["instances"], int) and spec["instances"] >= 1
        assert re.fullmatch(r"\d+[GMT]i", spec["storage"]["size"])
        assert set(spec["bootstrap"]) <= {"initdb", "recovery", "pg_basebackup"}
    if obj["kind"] == "ScheduledBackup":
        assert len(spec["schedule"].split()) == 6, "CloudNativePG schedules have six fields (seconds first)"
    if obj["kind"] == "ScaledObject":
        for trigger in spec["triggers"]:
            assert set(trigger) <= {"type", "metadata", "name", "authenticationRef", "metricType", "useCachedMetrics"}
            if trigger["type"] == "nats-jetstream":
                assert set(trigger["metadata"]) <= NATS_JETSTREAM_METADATA
                assert all(isinstance(v, str) for v in trigger["metadata"].values()), "KEDA metadata values are strings"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_each_overlay_renders_and_every_object_is_valid_for_kubernetes_1_31(overlay: str) -> None:
    objects = rendered(overlay)
    assert objects
    for obj in objects:
        if (obj["apiVersion"], obj["kind"]) in CUSTOM:
            check_custom(obj)
            continue
        try:
            kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            raise AssertionError(f"{obj['kind']}/{obj['metadata']['name']}: {exc.message}") from None
        assert obj["metadata"].get("namespace") or obj["kind"] == "Namespace", f"{obj['kind']} without namespace"


def test_the_dashboard_component_renders_onto_production(tmp_path: Path) -> None:
    """The dashboard's Deployment is a component an overlay adds when that service lands."""
    copy = tmp_path / "k8s"
    shutil.copytree(K8S, copy)
    (copy / "overlays" / "with-dashboard").mkdir()
    (copy / "overlays" / "with-dashboard" / "kustomization.yaml").write_text(
        "resources:\n  - ../production\ncomponents:\n  - ../../components/dashboard\n")
    objects = render(copy / "overlays" / "with-dashboard")
    for obj in objects:
        if (obj["apiVersion"], obj["kind"]) not in CUSTOM:
            kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
    dashboard = of_kind(objects, "Deployment")["dashboard"]
    assert dashboard["spec"]["template"]["spec"]["containers"][0]["command"] == ["calmesh-dashboard"]
    policy = of_kind(objects, "NetworkPolicy")["dashboard-from-callers"]
    assert allowed_apps(policy) == {"gateway"}
    assert "CALMESH_DASHBOARD_URL" in config(objects)


# --- workloads ------------------------------------------------------------------------------------

def console_scripts() -> set[str]:
    scripts: set[str] = set()
    for pyproject in [*ROOT.glob("services/*/pyproject.toml"), ROOT / "libs/common/pyproject.toml"]:
        scripts |= set(tomllib.loads(pyproject.read_text())["project"].get("scripts", {}))
    return scripts


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_one_deployment_per_service_and_the_migrate_job_all_on_the_one_image(overlay: str) -> None:
    objects = rendered(overlay)
    deployments = of_kind(objects, "Deployment")
    assert set(CALMESH) <= set(deployments)
    images = set()
    for name in CALMESH:
        [container] = deployments[name]["spec"]["template"]["spec"]["containers"]
        assert container["command"] == [f"calmesh-{name}"] and container["command"][0] in console_scripts()
        images.add(container["image"])
    [job] = of_kind(objects, "Job").values()
    [migrate] = job["spec"]["template"]["spec"]["containers"]
    assert migrate["command"] == ["calmesh-migrate"]
    images.add(migrate["image"])
    assert len(images) == 1 and ":" in images.pop(), "one image, with a tag"


def containers(objects) -> list[tuple[str, dict[str, Any], dict[str, Any]]]:  # type: ignore[no-untyped-def]
    found = []
    for obj in objects:
        if obj["kind"] in ("Deployment", "StatefulSet", "Job"):
            pod = obj["spec"]["template"]["spec"]
            found += [(f"{obj['kind']}/{obj['metadata']['name']}", pod, c) for c in pod["containers"]]
    return found


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_container_has_probes_resources_and_a_locked_down_security_context(overlay: str) -> None:
    for where, pod, container in containers(rendered(overlay)):
        if not where.startswith("Job/"):
            for probe in ("readinessProbe", "livenessProbe"):
                get = container[probe]["httpGet"]
                ports = {p["name"]: p["containerPort"] for p in container["ports"]}
                assert get["port"] in ports or get["port"] in ports.values(), where
            if where.startswith("Deployment/"):
                assert container["readinessProbe"]["httpGet"]["path"] == "/readyz", where
                assert container["livenessProbe"]["httpGet"]["path"] == "/livez", where
        for kind in ("requests", "limits"):
            assert {"cpu", "memory"} <= set(container["resources"][kind]), (where, kind)
        security = container["securityContext"]
        assert security["runAsNonRoot"] is True, where
        assert security["readOnlyRootFilesystem"] is True, where
        assert security["allowPrivilegeEscalation"] is False, where
        assert security["capabilities"]["drop"] == ["ALL"], where
        uid = security.get("runAsUser", pod.get("securityContext", {}).get("runAsUser"))
        assert isinstance(uid, int) and uid > 0, f"{where}: a numeric non-root runAsUser"
        # Nothing is written outside volumes: /tmp (and the data dir for CalMesh) are mounted.
        mounts = {m["mountPath"] for m in container.get("volumeMounts", [])}
        assert "/tmp" in mounts or where.startswith("StatefulSet/nats"), where


def test_the_image_user_is_the_one_the_pods_run_as() -> None:
    dockerfile = (ROOT / "deploy" / "Dockerfile").read_text()
    uid = int(re.findall(r"^USER (\d+)", dockerfile, re.M)[-1])
    for where, _, container in containers(rendered("production")):
        if "nats" not in where:
            assert container["securityContext"]["runAsUser"] == uid, where


def test_production_replicas_disruption_budgets_and_cpu_autoscalers() -> None:
    objects = rendered("production")
    deployments = of_kind(objects, "Deployment")
    assert deployments["gateway"]["spec"]["replicas"] >= 2 and deployments["availability"]["spec"]["replicas"] >= 2
    pdbs = list(of_kind(objects, "PodDisruptionBudget").values())
    for name, workload in {**deployments, **of_kind(objects, "StatefulSet")}.items():
        if workload["spec"]["replicas"] >= 2:
            assert any(selects(p["spec"]["selector"], pod_labels(workload)) for p in pdbs), f"{name}: no PDB"
    hpas = of_kind(objects, "HorizontalPodAutoscaler")
    for name in ("gateway", "availability", "booking"):
        hpa = next(h for h in hpas.values() if h["spec"]["scaleTargetRef"]["name"] == name)
        assert hpa["spec"]["scaleTargetRef"]["kind"] == "Deployment"
        assert [m["resource"]["name"] for m in hpa["spec"]["metrics"]] == ["cpu"]
        assert hpa["spec"]["minReplicas"] <= deployments[name]["spec"]["replicas"] <= hpa["spec"]["maxReplicas"]
    assert not [h for h in hpas.values() if h["spec"]["scaleTargetRef"]["name"] == "sync"], "KEDA owns sync's HPA"


def test_sync_workers_scale_with_keda_on_the_stream_and_consumer_the_code_declares() -> None:
    objects = rendered("production")
    [scaled] = of_kind(objects, "ScaledObject").values()
    assert scaled["apiVersion"] == "keda.sh/v1alpha1"
    assert scaled["spec"]["scaleTargetRef"]["name"] == "sync" and "sync" in of_kind(objects, "Deployment")
    assert scaled["spec"]["minReplicaCount"] >= 1 and scaled["spec"]["maxReplicaCount"] > scaled["spec"]["minReplicaCount"]
    [trigger] = scaled["spec"]["triggers"]
    assert trigger["type"] == "nats-jetstream"
    meta = trigger["metadata"]
    assert (meta["stream"], meta["consumer"]) == (SYNC_JOBS_STREAM, CONSUMER_NAME)
    # KEDA reads NATS' monitoring port on the headless Service of the StatefulSet, in this namespace.
    host, port = meta["natsServerMonitoringEndpoint"].rsplit(":", 1)
    nats = of_kind(objects, "StatefulSet")["nats"]
    assert host.split(".")[:2] == [nats["spec"]["serviceName"], scaled["metadata"]["namespace"]]
    assert int(port) in {p["containerPort"] for p in nats["spec"]["template"]["spec"]["containers"][0]["ports"]}


def test_no_autoscaler_or_operator_resource_in_dev() -> None:
    kinds = {o["kind"] for o in rendered("dev")}
    assert not kinds & {"ScaledObject", "Cluster", "HorizontalPodAutoscaler", "ScheduledBackup"}


# --- NATS and PostgreSQL --------------------------------------------------------------------------

def config(objects) -> dict[str, str]:  # type: ignore[no-untyped-def]
    return next(o["data"] for o in objects if o["kind"] == "ConfigMap" and o["metadata"]["name"].startswith("calmesh-config"))


def test_production_runs_a_3_node_jetstream_cluster_and_every_stream_at_r3() -> None:
    objects = rendered("production")
    nats = of_kind(objects, "StatefulSet")["nats"]
    assert nats["spec"]["replicas"] == 3
    headless = of_kind(objects, "Service")[nats["spec"]["serviceName"]]
    assert headless["spec"]["clusterIP"] == "None"
    assert nats["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"]
    conf = next(o["data"]["nats.conf"] for o in objects if o["kind"] == "ConfigMap" and "nats.conf" in o["data"])
    routes = re.findall(r"nats://(nats-\d)\.(\S+):6222", conf)
    assert sorted(pod for pod, _ in routes) == ["nats-0", "nats-1", "nats-2"]
    assert {svc for _, svc in routes} == {headless["metadata"]["name"]} and "jetstream" in conf
    # calmesh-migrate (the Job) reads the replica count from the same configuration.
    assert config(objects)["CALMESH_STREAM_REPLICAS"] == "3"
    [job] = of_kind(objects, "Job").values()
    env_from = job["spec"]["template"]["spec"]["containers"][0]["envFrom"]
    assert any(e["configMapRef"]["name"].startswith("calmesh-config") for e in env_from)
    assert config(rendered("dev"))["CALMESH_STREAM_REPLICAS"] == "1"
    assert of_kind(rendered("dev"), "StatefulSet")["nats"]["spec"]["replicas"] == 1


def test_production_postgresql_is_a_cloudnativepg_cluster_of_3_whose_secret_the_services_read() -> None:
    objects = rendered("production")
    [cluster] = of_kind(objects, "Cluster").values()
    assert cluster["apiVersion"] == "postgresql.cnpg.io/v1" and cluster["spec"]["instances"] == 3
    app_secret = f"{cluster['metadata']['name']}-app"  # the operator's Secret for the owner, key `uri`
    for where, _, container in containers(objects):
        if "nats" in where:
            continue
        [db] = [e for e in container["env"] if e["name"] == "DATABASE_URL"]
        assert db["valueFrom"]["secretKeyRef"] == {"name": app_secret, "key": "uri"}, where


# --- exposure, network, secrets -----------------------------------------------------------------

@pytest.mark.parametrize("overlay", OVERLAYS)
def test_only_the_gateway_is_exposed(overlay: str) -> None:
    objects = rendered(overlay)
    for service in of_kind(objects, "Service").values():
        assert service["spec"].get("type", "ClusterIP") == "ClusterIP", service["metadata"]["name"]
    for _, pod, container in containers(objects):
        assert not pod.get("hostNetwork") and not any("hostPort" in p for p in container.get("ports", []))
    backends = {p["backend"]["service"]["name"] for ing in of_kind(objects, "Ingress").values()
                for rule in ing["spec"]["rules"] for p in rule["http"]["paths"]}
    assert backends == {"gateway"}
    assert not of_kind(objects, "HTTPRoute") or {"gateway"} == {
        ref["name"] for r in of_kind(objects, "HTTPRoute").values() for rule in r["spec"]["rules"] for ref in rule["backendRefs"]}


def callers_from_code() -> dict[str, set[str]]:
    """Which CalMesh process calls which service's internal API, read from the source: every
    ``service_url("x")`` call; the gateway forwards to (and health-checks) every service."""
    callers: dict[str, set[str]] = {name: {"gateway"} for name in SERVICE_NAMES}
    for name in CALMESH:
        for source in (ROOT / "services" / name / "src").rglob("*.py"):
            for callee in re.findall(r"service_url\(\s*['\"]([a-z]+)['\"]", source.read_text()):
                callers[callee].add(name)
    return callers


def allowed_apps(policy: dict[str, Any]) -> set[str]:
    apps = set()
    for rule in policy["spec"].get("ingress", []):
        for peer in rule.get("from", []):
            assert "namespaceSelector" not in peer and "ipBlock" not in peer, "never from outside the namespace"
            apps.add(peer["podSelector"]["matchLabels"]["app.kubernetes.io/name"])
    return apps


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_network_policies_deny_by_default_and_let_exactly_the_callers_the_code_has(overlay: str) -> None:
    objects = rendered(overlay)
    policies = list(of_kind(objects, "NetworkPolicy").values())
    deny = [p for p in policies if p["spec"]["podSelector"] == {} and not p["spec"].get("ingress")]
    assert deny and deny[0]["spec"]["policyTypes"] == ["Ingress"]
    deployments = of_kind(objects, "Deployment")
    expected = callers_from_code()
    assert expected["connections"] >= {"sync", "booking", "availability"}  # the code reading works
    for service, callers in expected.items():
        labels = pod_labels(deployments[service])
        port = next(int(e["value"]) for e in deployments[service]["spec"]["template"]["spec"]["containers"][0]["env"]
                    if e["name"] == "CALMESH_PORT")
        mine = [p for p in policies if p["spec"]["podSelector"] and selects(p["spec"]["podSelector"], labels)]
        api = [p for p in mine if any({"port": port, "protocol": "TCP"} in r.get("ports", []) for r in p["spec"]["ingress"])]
        assert len(api) == 1, service
        assert allowed_apps(api[0]) == callers, service
    # The gateway takes traffic from the ingress controller's namespace only.
    gateway = [p for p in policies if p["spec"]["podSelector"] and selects(p["spec"]["podSelector"], pod_labels(deployments["gateway"]))
               and any({"port": 8080, "protocol": "TCP"} in r["ports"] for r in p["spec"]["ingress"])]
    [peer] = gateway[0]["spec"]["ingress"][0]["from"]
    assert peer["namespaceSelector"]["matchLabels"] == {"kubernetes.io/metadata.name": "ingress-nginx"}


def test_nats_and_postgresql_accept_calmesh_pods_their_cluster_and_their_operators() -> None:
    objects = rendered("production")
    policies = of_kind(objects, "NetworkPolicy")
    app_pod = pod_labels(of_kind(objects, "Deployment")["sync"])
    nats_pod = pod_labels(of_kind(objects, "StatefulSet")["nats"])

    def rules_for(labels: dict[str, str]) -> list[dict[str, Any]]:
        return [r for p in policies.values() if p["spec"]["podSelector"] and selects(p["spec"]["podSelector"], labels)
                for r in p["spec"]["ingress"]]

    def admits(rules, peer_labels: dict[str, str] | None, namespace: str | None, port: int) -> bool:  # type: ignore[no-untyped-def]
        for rule in rules:
            if {"port": port, "protocol": "TCP"} not in rule["ports"]:
                continue
            for peer in rule["from"]:
                ns = peer.get("namespaceSelector", {}).get("matchLabels", {}).get("kubernetes.io/metadata.name")
                if ns != namespace:
                    continue
                if peer_labels is None or selects(peer.get("podSelector", {}), peer_labels):
                    return True
        return False

    nats = rules_for(nats_pod)
    assert admits(nats, app_pod, None, 4222) and admits(nats, nats_pod, None, 6222)
    assert admits(nats, None, "keda", 8222) and not admits(nats, {"app": "other"}, None, 4222)
    postgres = rules_for({"cnpg.io/cluster": "calmesh-db"})
    assert admits(postgres, app_pod, None, 5432)
    assert admits(postgres, {"cnpg.io/cluster": "calmesh-db"}, None, 5432)  # replication
    assert admits(postgres, {"app.kubernetes.io/name": "cloudnative-pg"}, "cnpg-system", 8000)
    assert not admits(postgres, nats_pod, None, 5432)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_secrets_are_references_never_values(overlay: str) -> None:
    objects = rendered(overlay)
    assert not of_kind(objects, "Secret"), "no Secret objects (with values) in the manifests"
    for where, _, container in containers(objects):
        for env in container.get("env", []):
            if SECRET_LIKE.search(env["name"]):
                assert "value" not in env and "secretKeyRef" in env["valueFrom"], f"{where}: {env['name']}"
    for cm in of_kind(objects, "ConfigMap").values():
        assert not [k for k in cm["data"] if SECRET_LIKE.search(k)], cm["metadata"]["name"]
    text = "\n".join(yaml.safe_dump(o) for o in objects)
    assert not re.search(r"postgres(ql)?://[^\s:]+:[^\s@]+@", text), "no credentials in a URL"
    assert not re.search(r"nats://[^\s/@]+@", text), "no NATS token in a URL"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_nats_asks_every_client_for_the_token_calmesh_reads_from_the_secret(overlay: str) -> None:
    """A pod of the cluster that is not CalMesh can neither read booking events (visitors' personal
    data) nor publish forged ones: every NATS server requires the token of calmesh-secrets, and
    every CalMesh container connects with the URL of the same Secret (it carries the token)."""
    objects = rendered(overlay)
    assert "NATS_URL" not in config(objects), "NATS_URL carries the token: it is no ConfigMap value"
    calmesh = [(where, c) for where, _, c in containers(objects) if not where.startswith("StatefulSet/nats")]
    assert len(calmesh) == len(CALMESH) + 1  # the services and the migrate Job
    for where, container in calmesh:
        [url] = [e for e in container["env"] if e["name"] == "NATS_URL"]
        assert url["valueFrom"]["secretKeyRef"] == {"name": "calmesh-secrets", "key": "nats-url"}, where
    [server] = of_kind(objects, "StatefulSet")["nats"]["spec"]["template"]["spec"]["containers"]
    [token] = [e for e in server["env"] if e["name"] == "NATS_TOKEN"]
    assert token["valueFrom"]["secretKeyRef"] == {"name": "calmesh-secrets", "key": "nats-token"}
    conf = next(o["data"]["nats.conf"] for o in objects if o["kind"] == "ConfigMap" and "nats.conf" in o["data"])
    # nats-server resolves $NATS_TOKEN from its environment; an authorization block with a token
    # refuses every client that does not send it.
    assert re.search(r"(?m)^authorization\s*\{\s*token:\s*\$NATS_TOKEN\s*\}", conf), conf


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_nats_server_accepts_each_overlays_configuration(overlay: str, tmp_path: Path) -> None:
    """The rendered nats.conf is one nats-server starts with (`-t` checks it as a start would), given
    the environment the StatefulSet sets; without the Secret's token it refuses to start at all."""
    from calmesh_common.devstack.embedded import _bin

    objects = rendered(overlay)
    conf = next(o["data"]["nats.conf"] for o in objects if o["kind"] == "ConfigMap" and "nats.conf" in o["data"])
    (tmp_path / "nats.conf").write_text(conf)
    env = {"PATH": "/usr/bin:/bin", "POD_NAME": "nats-0", "NATS_TOKEN": "a-token-from-the-secret"}
    check = [_bin("nats-server"), "-t", "-c", str(tmp_path / "nats.conf")]
    ok = subprocess.run(check, env=env, capture_output=True, text=True, timeout=30)
    assert ok.returncode == 0, ok.stderr + ok.stdout
    env.pop("NATS_TOKEN")
    refused = subprocess.run(check, env=env, capture_output=True, text=True, timeout=30)
    assert refused.returncode != 0 and "NATS_TOKEN" in refused.stderr + refused.stdout


def test_the_gateway_reaches_every_service_at_the_address_the_settings_name() -> None:
    objects = rendered("production")
    data = config(objects)
    services = of_kind(objects, "Service")
    for name in SERVICE_NAMES:
        url = data[f"CALMESH_{name.upper()}_URL"]
        host, port = re.fullmatch(r"http://([a-z-]+):(\d+)", url).groups()  # type: ignore[union-attr]
        assert host == name and int(port) in {p["port"] for p in services[name]["spec"]["ports"]}
