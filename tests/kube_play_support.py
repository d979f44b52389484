"""Runs rendered Kubernetes manifests with `podman kube play` (podman 4.3, Debian 12's).

`plan()` turns the documents `kubectl kustomize` renders into what podman 4.3
plays, keeping each container's own image, command, args, env, ports and volumes
(read from the rendered YAML, never written again here). What podman 4.3 does
with each kind, as tried on this machine (docs/deploy.md, section 9, says the same):

- played as they are: Pod, Deployment (one replica), ConfigMap, PersistentVolumeClaim;
- StatefulSet: not played. Each replica becomes a Pod named `<name>-<ordinal>` with
  the template's containers, its `hostname` and `subdomain`, and one
  PersistentVolumeClaim per claim template (`<claim>-<name>-<ordinal>`), as the
  StatefulSet controller would make them;
- Secret: podman plays the kind (it stores the document as a podman secret), but
  neither of its consumers reads what it stores: `secretKeyRef`/`secretRef` env
  wants a JSON map of base64 values, a `secret` volume writes the `data` values
  as they are (undecoded) and dereferences an unset `optional` (a crash). Each
  Secret is made with `podman secret create` in the form its consumers read;
- Service: nothing to play (no kube-proxy, no cluster DNS; podman's CNI network
  has no DNS plugin here). Each pod gets a fixed address on one network, and
  every pod's `hostAliases` maps each Service's names (`svc`, `svc.ns`,
  `svc.ns.svc`, `svc.ns.svc.cluster.local`, and `pod.svc...` of a headless
  Service) to the address of the pod its selector picks;
- Namespace, ServiceAccount, NetworkPolicy, PodDisruptionBudget,
  HorizontalPodAutoscaler (and other objects of the cluster's API): nothing to
  run, left out. Podman has one namespace: ConfigMaps and Secrets of every
  namespace share it (two with one name must be equal).

Kubelet features podman 4.3 lacks, done here on the pod spec:

- `$(VAR)` in env values, command and args is expanded (podman passes it on as
  it is) from the container's earlier variables, with the same rules;
- the downward API's `status.hostIP` (podman refuses it) and `status.podIP`
  become the node's address (the network's gateway: the host, as the pod reaches
  it) and the pod's fixed address;
- a `secret` volume without `optional` gets `optional: false` (the default).

And for the test bench (each said where it is asked for): images not obtainable
here are replaced by local ones (`images`), named volumes can be replaced by
host directories (`host_dirs`: the builder's layer cache kept between runs, a
node path moved into the run's own directory), and chosen container ports are
published on 127.0.0.1 (`publish`).
"""

from __future__ import annotations

import base64
import copy
import ipaddress
import json
import re
import socket
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from kiln_common.proc import run_sync

Doc = dict[str, Any]

PLAYED_KINDS = frozenset({"Pod", "Deployment", "ConfigMap", "PersistentVolumeClaim"})
CONVERTED_KINDS = frozenset({"StatefulSet", "Secret", "Service"})
# Objects of the cluster's API: nothing in them runs a container.
LEFT_OUT_KINDS = frozenset(
    {
        "Namespace",
        "ServiceAccount",
        "NetworkPolicy",
        "PodDisruptionBudget",
        "HorizontalPodAutoscaler",
        "Role",
        "RoleBinding",
        "ClusterRole",
        "ClusterRoleBinding",
        "ScaledObject",
        "TriggerAuthentication",
        "PriorityClass",
        "ResourceQuota",
        "LimitRange",
    }
)
WORKLOAD_KINDS = ("Pod", "Deployment", "StatefulSet")
CLUSTER_DOMAIN = "cluster.local"
PODMAN_TIMEOUT = 300.0
_VAR = re.compile(r"\$\$|\$\(([-._a-zA-Z][-._a-zA-Z0-9]*)\)")


class UnplayableError(Exception):
    """The manifests use something this converter cannot carry over faithfully."""


@dataclass(frozen=True)
class Workload:
    """One pod as podman plays it: `docs` is the file given to `podman kube play`."""

    kind: str  # in the rendered manifests: Pod, Deployment or StatefulSet
    name: str  # the workload's name there (a StatefulSet's, for its pods)
    namespace: str
    pod_name: str  # the pod's name in podman
    ip: str
    docs: list[Doc]
    published: dict[str, int] = field(default_factory=dict)  # "container/port" -> host port
    volumes: list[str] = field(default_factory=list)  # named volumes it makes (PVCs)

    def container(self, name: str) -> str:
        """The podman name of one of its containers."""
        return f"{self.pod_name}-{name}"

    def uses_secret(self, name: str) -> bool:
        return name in _secret_names(_pod_spec(self.docs[-1]))


@dataclass(frozen=True)
class PodmanSecret:
    name: str
    content: bytes
    volume: bool  # read by a secret volume (podman also makes a named volume of it)


@dataclass(frozen=True)
class Plan:
    workloads: list[Workload]
    secrets: list[PodmanSecret]
    converted: dict[str, list[str]]  # kind -> "namespace/name", not played as such
    left_out: dict[str, list[str]]
    notes: list[str]  # what could not be carried over exactly (port remaps, say)

    def workload(self, name: str) -> Workload:
        found = [w for w in self.workloads if w.name == name]
        if not found:
            raise LookupError(f"no workload {name!r}")
        return found[0]


# ---- the conversion (pure: unit-tested) -------------------------------------------------


def plan(
    docs: Sequence[Doc],
    *,
    addresses: Iterator[str],
    node_ip: str,
    images: Mapping[str, str] | None = None,
    host_dirs: Mapping[tuple[str, str], Path] | None = None,
    publish: Mapping[tuple[str, str], int] | None = None,
) -> Plan:
    """The pods to play, in the manifests' order, and the secrets to make first.

    addresses: one fixed address per pod, in order. node_ip: status.hostIP.
    images: image -> local replacement. host_dirs: (workload, volume) -> a host
    directory that replaces that volume. publish: (workload, "container/port")
    -> host port on 127.0.0.1 (port: its name or number)."""
    docs = [copy.deepcopy(d) for d in docs]
    images, host_dirs, publish = images or {}, host_dirs or {}, publish or {}
    converted: dict[str, list[str]] = {}
    left_out: dict[str, list[str]] = {}
    for doc in docs:
        kind, ref = doc["kind"], _ref(doc)
        if kind in CONVERTED_KINDS:
            converted.setdefault(kind, []).append(ref)
        elif kind in LEFT_OUT_KINDS:
            left_out.setdefault(kind, []).append(ref)
        elif kind not in PLAYED_KINDS:
            raise UnplayableError(f"{kind} {ref}: podman cannot play it and no conversion is known")
    config_maps = _unique(d for d in docs if d["kind"] == "ConfigMap")
    secrets = _unique(d for d in docs if d["kind"] == "Secret")
    claims = [d for d in docs if d["kind"] == "PersistentVolumeClaim"]

    pods = [pod for d in docs if d["kind"] in WORKLOAD_KINDS for pod in _pods(d)]
    for pod in pods:
        pod.ip = next(addresses)
    aliases, notes = _aliases([d for d in docs if d["kind"] == "Service"], pods)

    workloads = []
    for pod in pods:
        spec = pod.spec
        values = _Values(config_maps, secrets, pod, node_ip)
        for container in [*spec.get("initContainers", []), *spec.get("containers", [])]:
            _expand(container, values)
            if container["image"] in images:
                container["image"] = images[container["image"]]
        for volume in spec.get("volumes", []):
            if "secret" in volume:
                volume["secret"].setdefault("optional", False)
            if (pod.workload, volume["name"]) in host_dirs:
                path = host_dirs[(pod.workload, volume["name"])]
                for source in [k for k in volume if k != "name"]:
                    del volume[source]
                volume["hostPath"] = {"path": str(path), "type": "DirectoryOrCreate"}
        published = _publish(pod, publish)
        spec["hostAliases"] = [
            *spec.get("hostAliases", []),
            *_for_namespace(aliases, pod.namespace),
        ]
        own_claims = [c for c in [*claims, *pod.claims] if c["metadata"]["name"] in _claims(spec)]
        workloads.append(
            Workload(
                kind=pod.kind,
                name=pod.workload,
                namespace=pod.namespace,
                pod_name=pod.podman_name,
                ip=pod.ip,
                docs=[*config_maps, *own_claims, pod.doc],
                published=published,
                volumes=[c["metadata"]["name"] for c in own_claims],
            )
        )
    return Plan(
        workloads=workloads,
        secrets=_podman_secrets(secrets, [w.docs[-1] for w in workloads]),
        converted=converted,
        left_out=left_out,
        notes=notes,
    )


@dataclass
class _Pod:
    kind: str
    workload: str
    namespace: str
    podman_name: str
    doc: Doc  # a Pod or a one-replica Deployment
    labels: dict[str, str]
    hostname: str = ""
    subdomain: str = ""
    claims: list[Doc] = field(default_factory=list)
    ip: str = ""

    @property
    def spec(self) -> dict[str, Any]:
        return _pod_spec(self.doc)


def _pods(doc: Doc) -> list[_Pod]:
    meta, kind = doc["metadata"], doc["kind"]
    name, namespace = meta["name"], meta.get("namespace", "default")
    if kind == "Pod":
        labels = meta.get("labels", {})
        spec = doc["spec"]
        return [
            _Pod(
                kind,
                name,
                namespace,
                name,
                doc,
                labels,
                spec.get("hostname", name),
                spec.get("subdomain", ""),
            )
        ]
    replicas = doc["spec"].get("replicas", 1)
    template = doc["spec"]["template"]
    labels = template.get("metadata", {}).get("labels", {})
    if kind == "Deployment":
        if replicas != 1:
            raise UnplayableError(f"Deployment {namespace}/{name}: podman plays one replica")
        # podman 4.3 names a Deployment's pod <name>-pod-0, its host name too.
        return [_Pod(kind, name, namespace, f"{name}-pod-0", doc, labels, f"{name}-pod-0")]
    pods = []
    for ordinal in range(replicas):
        pod_name = f"{name}-{ordinal}"
        pod_meta = {
            **copy.deepcopy(template.get("metadata", {})),
            "name": pod_name,
            "namespace": namespace,
        }
        spec = copy.deepcopy(template["spec"])
        spec["hostname"] = pod_name
        spec["subdomain"] = doc["spec"].get("serviceName", "")
        claims = []
        for claim in doc["spec"].get("volumeClaimTemplates", []):
            claim_name = f"{claim['metadata']['name']}-{pod_name}"
            claims.append(
                {
                    "apiVersion": "v1",
                    "kind": "PersistentVolumeClaim",
                    "metadata": {
                        "name": claim_name,
                        "namespace": namespace,
                        "labels": claim["metadata"].get("labels", {}),
                    },
                    "spec": copy.deepcopy(claim["spec"]),
                }
            )
            spec.setdefault("volumes", []).append(
                {
                    "name": claim["metadata"]["name"],
                    "persistentVolumeClaim": {"claimName": claim_name},
                }
            )
        pod = {"apiVersion": "v1", "kind": "Pod", "metadata": pod_meta, "spec": spec}
        pods.append(
            _Pod(
                "StatefulSet",
                name,
                namespace,
                pod_name,
                pod,
                labels,
                pod_name,
                spec["subdomain"],
                claims,
            )
        )
    return pods


def _pod_spec(doc: Doc) -> dict[str, Any]:
    return doc["spec"] if doc["kind"] == "Pod" else doc["spec"]["template"]["spec"]  # type: ignore[no-any-return]


def _ref(doc: Doc) -> str:
    return f"{doc['metadata'].get('namespace', 'default')}/{doc['metadata']['name']}"


def _unique(docs: Iterator[Doc] | list[Doc]) -> list[Doc]:
    """Namespaced objects in podman's one namespace: one of each name."""
    seen: dict[str, Doc] = {}
    for doc in docs:
        name = doc["metadata"]["name"]
        body = {k: v for k, v in doc.items() if k != "metadata"}
        if name in seen and {k: v for k, v in seen[name].items() if k != "metadata"} != body:
            raise UnplayableError(
                f"two different {doc['kind']}s named {name} (podman has one namespace)"
            )
        seen.setdefault(name, doc)
    return list(seen.values())


def _claims(spec: dict[str, Any]) -> set[str]:
    return {
        v["persistentVolumeClaim"]["claimName"]
        for v in spec.get("volumes", [])
        if "persistentVolumeClaim" in v
    }


def _secret_names(spec: dict[str, Any]) -> set[str]:
    names = {v["secret"]["secretName"] for v in spec.get("volumes", []) if "secret" in v}
    for container in [*spec.get("initContainers", []), *spec.get("containers", [])]:
        names |= _env_secret_names(container)
    return names


def _env_secret_names(container: dict[str, Any]) -> set[str]:
    names = {e["secretRef"]["name"] for e in container.get("envFrom", []) if "secretRef" in e}
    for env in container.get("env", []):
        ref = env.get("valueFrom", {}).get("secretKeyRef")
        if ref:
            names.add(ref["name"])
    return names


# ---- Services -> host names ---------------------------------------------------------------


def _aliases(services: list[Doc], pods: list[_Pod]) -> tuple[list[dict[str, Any]], list[str]]:
    """hostAliases entries (each with the namespace it was made in, for short names)."""
    entries: list[dict[str, Any]] = []
    notes: list[str] = []
    for service in services:
        name = service["metadata"]["name"]
        namespace = service["metadata"].get("namespace", "default")
        selector = service["spec"].get("selector") or {}
        chosen = [
            p
            for p in pods
            if p.namespace == namespace
            and selector
            and all(p.labels.get(k) == v for k, v in selector.items())
        ]
        if not chosen:
            notes.append(f"Service {namespace}/{name} selects no pod: its names resolve nowhere")
            continue
        if len(chosen) > 1 and service["spec"].get("clusterIP") != "None":
            notes.append(f"Service {namespace}/{name}: its name is the first of {len(chosen)} pods")
        for port in service["spec"].get("ports", []):
            target = _target_port(port, chosen[0])
            if target != port["port"]:
                notes.append(
                    f"Service {namespace}/{name} port {port['port']} -> {target}: a host "
                    f"name cannot move a port; clients must use {target}"
                )
        entries.append({"ip": chosen[0].ip, "namespace": namespace, "names": [name]})
        if service["spec"].get("clusterIP") == "None":
            for pod in chosen:
                if pod.subdomain == name:
                    entries.append(
                        {"ip": pod.ip, "namespace": namespace, "names": [f"{pod.hostname}.{name}"]}
                    )
    return entries, notes


def _target_port(port: dict[str, Any], pod: _Pod) -> int:
    target = port.get("targetPort", port["port"])
    if isinstance(target, int):
        return target
    for container in pod.spec.get("containers", []):
        for p in container.get("ports", []):
            if p.get("name") == target:
                return int(p["containerPort"])
    raise UnplayableError(f"port {target!r} is not a port of pod {pod.podman_name}")


def _for_namespace(entries: list[dict[str, Any]], namespace: str) -> list[dict[str, Any]]:
    """The pod's hostAliases: each name in its cluster forms; the short form only
    for Services of the pod's own namespace (as its DNS search path has it)."""
    by_ip: dict[str, list[str]] = {}
    for entry in entries:
        for name in entry["names"]:
            ns = entry["namespace"]
            forms = [f"{name}.{ns}", f"{name}.{ns}.svc", f"{name}.{ns}.svc.{CLUSTER_DOMAIN}"]
            if ns == namespace:
                forms.insert(0, name)
            by_ip.setdefault(entry["ip"], []).extend(forms)
    return [{"ip": ip, "hostnames": names} for ip, names in by_ip.items()]


# ---- env ----------------------------------------------------------------------------------


class _Values:
    """What the kubelet would give a container's variables."""

    def __init__(self, config_maps: list[Doc], secrets: list[Doc], pod: _Pod, node_ip: str):
        self.config_maps = {d["metadata"]["name"]: d.get("data", {}) for d in config_maps}
        self.secrets = {d["metadata"]["name"]: secret_values(d) for d in secrets}
        self.pod, self.node_ip = pod, node_ip

    def field(self, path: str) -> str | None:
        fields = {
            "metadata.name": self.pod.podman_name,
            "metadata.namespace": self.pod.namespace,
            "status.hostIP": self.node_ip,
            "status.podIP": self.pod.ip,
            "spec.nodeName": socket.gethostname(),
        }
        return fields.get(path)

    def source(self, ref: dict[str, Any]) -> str | None:
        if "fieldRef" in ref:
            return self.field(ref["fieldRef"]["fieldPath"])
        if "configMapKeyRef" in ref:
            key = ref["configMapKeyRef"]
            return self.config_maps.get(key["name"], {}).get(key["key"])
        if "secretKeyRef" in ref:
            key = ref["secretKeyRef"]
            return self.secrets.get(key["name"], {}).get(key["key"])
        return None


# Downward API fields podman 4.3 refuses (metadata.name and labels it gives itself).
_UNSUPPORTED_FIELDS = ("status.hostIP", "status.podIP", "spec.nodeName")


def _expand(container: dict[str, Any], values: _Values) -> None:
    known: dict[str, str] = {}
    for source in container.get("envFrom", []):
        prefix = source.get("prefix", "")
        if "configMapRef" in source:
            data = values.config_maps.get(source["configMapRef"]["name"], {})
        else:
            data = values.secrets.get(source["secretRef"]["name"], {})
        known.update({prefix + k: str(v) for k, v in data.items()})
    for env in container.get("env", []):
        if "value" in env:
            env["value"] = expand(str(env["value"]), known)
            known[env["name"]] = env["value"]
            continue
        ref = env.get("valueFrom", {})
        value = values.source(ref)
        if "fieldRef" in ref and ref["fieldRef"]["fieldPath"] in _UNSUPPORTED_FIELDS:
            del env["valueFrom"]
            env["value"] = value or ""
        if value is not None:
            known[env["name"]] = value
    for key in ("command", "args"):
        if key in container:
            container[key] = [expand(str(a), known) for a in container[key]]


def expand(text: str, known: Mapping[str, str]) -> str:
    """Kubernetes' $(VAR) expansion: a known variable is replaced, an unknown
    reference is left as it is, and $$ is a literal $."""

    def one(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        return known.get(match.group(1), match.group(0))

    return _VAR.sub(one, text)


# ---- ports --------------------------------------------------------------------------------


def _publish(pod: _Pod, publish: Mapping[tuple[str, str], int]) -> dict[str, int]:
    """Adds hostPort/hostIP to the ports asked for; returns them by the key asked with."""
    published = {}
    for container in pod.spec.get("containers", []):
        for port in container.get("ports", []):
            for key in (port.get("name"), str(port["containerPort"])):
                asked = f"{container['name']}/{key}"
                wanted = publish.get((pod.workload, asked))
                if wanted:
                    port["hostPort"], port["hostIP"] = wanted, "127.0.0.1"
                    published[asked] = wanted
    return published


# ---- Secrets ------------------------------------------------------------------------------


def secret_values(doc: Doc) -> dict[str, str]:
    """A Secret's values, decoded (`stringData` over `data`, as the API server merges them)."""
    values = {k: base64.b64decode(v).decode() for k, v in (doc.get("data") or {}).items()}
    values.update({k: str(v) for k, v in (doc.get("stringData") or {}).items()})
    return values


def env_secret(name: str, values: Mapping[str, str]) -> PodmanSecret:
    """A secret as podman 4.3's secretKeyRef and secretRef read it: JSON, base64 values."""
    content = {k: base64.b64encode(v.encode()).decode() for k, v in values.items()}
    return PodmanSecret(name, json.dumps(content, sort_keys=True).encode(), volume=False)


def volume_secret(name: str, values: Mapping[str, str]) -> PodmanSecret:
    """A secret as podman 4.3's secret volume reads it: a Secret whose `data`
    holds the files' contents as they are (podman writes them undecoded)."""
    doc = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name}, "data": dict(values)}
    return PodmanSecret(name, yaml.safe_dump(doc, sort_keys=True).encode(), volume=True)


def _podman_secrets(secrets: list[Doc], pods: list[Doc]) -> list[PodmanSecret]:
    as_env: set[str] = set()
    as_volume: set[str] = set()
    for pod in pods:
        spec = _pod_spec(pod)
        as_volume |= {v["secret"]["secretName"] for v in spec.get("volumes", []) if "secret" in v}
        for container in [*spec.get("initContainers", []), *spec.get("containers", [])]:
            as_env |= _env_secret_names(container)
    made = []
    for doc in secrets:
        name = doc["metadata"]["name"]
        if name in as_env and name in as_volume:
            raise UnplayableError(
                f"Secret {name} is read as env and as a volume: podman 4.3 reads the two "
                "from different forms of one podman secret"
            )
        if name in as_volume:
            made.append(volume_secret(name, secret_values(doc)))
        elif name in as_env:
            made.append(env_secret(name, secret_values(doc)))
    return made


# ---- running it ---------------------------------------------------------------------------


def podman(
    *args: str,
    env: Mapping[str, str],
    check: bool = True,
    timeout: float = PODMAN_TIMEOUT,
    cwd: Path | None = None,
) -> str:
    return run_sync(["podman", *args], env=env, check=check, timeout=timeout, cwd=cwd).stdout


@dataclass(frozen=True)
class Network:
    name: str
    gateway: str
    subnet: str

    def addresses(self) -> Iterator[str]:
        """Fixed pod addresses: from .10 of the subnet up."""
        net = ipaddress.ip_network(self.subnet)
        for host in list(net.hosts())[9:]:
            yield str(host)


@contextmanager
def network(name: str, env: Mapping[str, str]) -> Iterator[Network]:
    """A podman network of its own (podman picks a free subnet); removed afterwards."""
    podman("network", "create", name, env=env)
    try:
        # The last line: run_sync's output holds podman's warnings (stderr) too.
        shown = podman(
            "network",
            "inspect",
            name,
            "--format",
            "{{range .Subnets}}{{.Subnet}} {{.Gateway}}{{end}}",
            env=env,
        )
        subnet, gateway = shown.strip().splitlines()[-1].split()
        yield Network(name, gateway, subnet)
    finally:
        podman("network", "rm", "-f", name, env=env, check=False)


def create_secret(secret: PodmanSecret, directory: Path, env: Mapping[str, str]) -> None:
    # The manifests fix the names: a run killed before its teardown left its own
    # secrets behind, and podman refuses a name in use.
    remove_secret(secret, env)
    path = directory / f"secret-{secret.name}"
    path.write_bytes(secret.content)
    path.chmod(0o600)
    try:
        podman("secret", "create", secret.name, str(path), env=env)
    finally:
        path.unlink()


def remove_secret(secret: PodmanSecret, env: Mapping[str, str]) -> None:
    podman("secret", "rm", secret.name, env=env, check=False)
    if secret.volume:  # podman 4.3 keeps a secret volume's files in a named volume
        podman("volume", "rm", secret.name, env=env, check=False)


def write_play_file(workload: Workload, directory: Path) -> Path:
    path = directory / f"{workload.pod_name}.yaml"
    path.write_text(yaml.safe_dump_all(workload.docs, sort_keys=False))
    return path


def play(workload: Workload, directory: Path, net: Network, env: Mapping[str, str]) -> Path:
    """`podman kube play` of one workload's file, on the network at its address."""
    path = write_play_file(workload, directory)
    # The manifests fix the pod's and its claims' names: a run killed before its
    # teardown left them behind (and a claim's old JetStream store would be reused).
    podman("pod", "rm", "-f", "--ignore", workload.pod_name, env=env, check=False, timeout=120)
    for volume in workload.volumes:
        podman("volume", "rm", volume, env=env, check=False)
    # In the play files' directory: conmon writes an empty `oom` file into its
    # working directory when a container is OOM-killed.
    podman(
        "kube",
        "play",
        "--build=false",
        "--network",
        net.name,
        "--ip",
        workload.ip,
        str(path),
        env=env,
        cwd=directory,
    )
    return path


def down(workload: Workload, path: Path, env: Mapping[str, str]) -> None:
    """`podman kube down`, then whatever it leaves: the pod, anonymous volumes
    (emptyDir) of its containers, and the named volumes of its claims."""
    mounts = podman(
        "pod",
        "inspect",
        workload.pod_name,
        "--format",
        "{{range .Containers}}{{.ID}} {{end}}",
        env=env,
        check=False,
    ).split()
    anonymous: list[str] = []
    for container in mounts:
        out = podman(
            "container",
            "inspect",
            container,
            "--format",
            '{{range .Mounts}}{{if eq .Type "volume"}}{{.Name}} {{end}}{{end}}',
            env=env,
            check=False,
        )
        anonymous.extend(out.split())
    podman("kube", "down", str(path), env=env, check=False, timeout=120)
    podman("pod", "rm", "-f", "--ignore", workload.pod_name, env=env, check=False, timeout=120)
    for volume in [*anonymous, *workload.volumes]:  # not -f: that would remove users too
        podman("volume", "rm", volume, env=env, check=False)


# ---- images no registry gives here ------------------------------------------------------

BASE_IMAGE = "localhost/debian:bookworm"  # scripts/build-images.sh imports it


def binary_image(
    tag: str, binary: Path, entrypoint: Sequence[str], context: Path, env: Mapping[str, str]
) -> str:
    """A minimal image: the Debian base and one static binary on PATH (the
    host's own nats-server or weed, the versions the dev stack runs), with
    entrypoint as the upstream image's. podman's layer cache makes a rebuild cheap."""
    context.mkdir(parents=True, exist_ok=True)
    target = context / binary.name
    if not target.exists() or target.stat().st_size != binary.stat().st_size:
        target.write_bytes(binary.read_bytes())
        target.chmod(0o755)
    (context / "Containerfile").write_text(
        f"FROM {BASE_IMAGE}\n"
        f"COPY {binary.name} /usr/local/bin/{binary.name}\n"
        "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\n"
        f"ENTRYPOINT {json.dumps(list(entrypoint))}\n"
    )
    podman("build", "--layers", "-t", tag, str(context), env=env, timeout=600)
    return tag
