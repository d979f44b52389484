"""tests/kube_play_support.plan: rendered manifests to what podman 4.3 plays, with the
manifests' own containers, env, args and volumes (tests/e2e/test_kube_play.py plays it)."""

from __future__ import annotations

import base64
import itertools
import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from kube_play_support import Plan, UnplayableError, expand, plan

Doc = dict[str, Any]
LABELS = {"app": "nats"}


def docs() -> list[Doc]:
    text = """
apiVersion: v1
kind: Namespace
metadata: {name: kiln}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: app-config, namespace: kiln}
data: {HOST: "nats", PORT: "4222"}
---
apiVersion: v1
kind: Secret
metadata: {name: users, namespace: kiln}
stringData: {app: "pw0"}
---
apiVersion: v1
kind: Secret
metadata: {name: keys, namespace: kiln}
data: {key.json: "e30="}
---
apiVersion: v1
kind: Service
metadata: {name: nats, namespace: kiln}
spec:
  selector: {app: nats}
  ports: [{name: client, port: 4222, targetPort: client}]
---
apiVersion: v1
kind: Service
metadata: {name: nats-headless, namespace: kiln}
spec:
  clusterIP: None
  selector: {app: nats}
  ports: [{name: client, port: 4222}]
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: kiln}
spec:
  selector: {app: web}
  ports: [{port: 80, targetPort: http}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny, namespace: kiln}
spec: {podSelector: {}}
---
apiVersion: apps/v1
kind: StatefulSet
metadata: {name: nats, namespace: kiln}
spec:
  serviceName: nats-headless
  replicas: 2
  selector: {matchLabels: {app: nats}}
  template:
    metadata: {labels: {app: nats}}
    spec:
      containers:
        - name: nats
          image: nats:2.15.1-alpine
          args: ["--config", "/etc/nats/nats.conf", "--name", "$(POD_NAME)"]
          env:
            - {name: POD_NAME, valueFrom: {fieldRef: {fieldPath: metadata.name}}}
          ports: [{name: client, containerPort: 4222}]
          volumeMounts: [{name: data, mountPath: /data}]
  volumeClaimTemplates:
    - metadata: {name: data}
      spec: {accessModes: [ReadWriteOnce], resources: {requests: {storage: 1Gi}}}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: web-ns}
spec:
  replicas: 1
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers:
        - name: web
          image: localhost/kiln/web:1
          envFrom: [{configMapRef: {name: app-config}}]
          env:
            - {name: NODE, valueFrom: {fieldRef: {fieldPath: status.hostIP}}}
            - {name: PW, valueFrom: {secretKeyRef: {name: users, key: app}}}
            - {name: URL, value: "nats://app:$(PW)@$(HOST):$(PORT) $$(PW) $(NOPE)"}
          ports: [{name: http, containerPort: 8080}, {name: health, containerPort: 8086}]
          volumeMounts: [{name: keys, mountPath: /keys}, {name: cache, mountPath: /cache}]
      volumes:
        - {name: keys, secret: {secretName: keys}}
        - {name: cache, emptyDir: {}}
"""
    return [d for d in yaml.safe_load_all(text) if d]


def convert(**options: Any) -> Plan:
    addresses = (f"10.89.7.{n}" for n in itertools.count(10))
    return plan(docs(), addresses=addresses, node_ip="10.89.7.1", **options)


def container(setup: Plan, workload: str, index: int = 0) -> Doc:
    doc = setup.workloads[index if workload == "nats" else -1].docs[-1]
    spec = doc["spec"] if doc["kind"] == "Pod" else doc["spec"]["template"]["spec"]
    found: Doc = spec["containers"][0]
    return found


def test_kinds_podman_plays_are_kept_and_the_rest_converted_or_left_out() -> None:
    setup = convert()
    assert [(w.kind, w.pod_name, w.ip) for w in setup.workloads] == [
        ("StatefulSet", "nats-0", "10.89.7.10"),
        ("StatefulSet", "nats-1", "10.89.7.11"),
        ("Deployment", "web-pod-0", "10.89.7.12"),
    ]
    assert setup.converted == {
        "Secret": ["kiln/users", "kiln/keys"],
        "Service": ["kiln/nats", "kiln/nats-headless", "kiln/web"],
        "StatefulSet": ["kiln/nats"],
    }
    assert setup.left_out == {"Namespace": ["default/kiln"], "NetworkPolicy": ["kiln/deny"]}
    web = setup.workloads[-1].docs
    assert [d["kind"] for d in web] == ["ConfigMap", "Deployment"]  # the Deployment as it is
    assert all(
        d["kind"] in ("ConfigMap", "PersistentVolumeClaim", "Pod", "Deployment")
        for w in setup.workloads
        for d in w.docs
    )


def test_a_statefulset_becomes_its_pods_with_their_own_claims() -> None:
    setup = convert()
    for ordinal, workload in enumerate(setup.workloads[:2]):
        claim, pod = workload.docs[-2:]
        assert claim["kind"] == "PersistentVolumeClaim"
        assert claim["metadata"]["name"] == f"data-nats-{ordinal}" == workload.volumes[0]
        assert claim["spec"]["resources"] == {"requests": {"storage": "1Gi"}}
        assert pod["kind"] == "Pod" and pod["metadata"]["labels"] == LABELS
        assert pod["spec"]["hostname"] == f"nats-{ordinal}"
        assert pod["spec"]["subdomain"] == "nats-headless"
        assert {"name": "data", "persistentVolumeClaim": {"claimName": f"data-nats-{ordinal}"}} in (
            pod["spec"]["volumes"]
        )
        c = container(setup, "nats", ordinal)
        # The template's container as it is, $(POD_NAME) expanded as the kubelet would.
        assert c["image"] == "nats:2.15.1-alpine"
        assert c["args"] == ["--config", "/etc/nats/nats.conf", "--name", f"nats-{ordinal}"]
        assert c["env"] == [
            {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}
        ]
        assert c["volumeMounts"] == [{"name": "data", "mountPath": "/data"}]


def test_env_keeps_what_podman_resolves_and_expands_what_it_does_not() -> None:
    c = container(convert(), "web")
    env = {e["name"]: e for e in c["env"]}
    assert env["PW"] == {
        "name": "PW",
        "valueFrom": {"secretKeyRef": {"name": "users", "key": "app"}},
    }
    assert env["NODE"] == {"name": "NODE", "value": "10.89.7.1"}  # status.hostIP: refused by podman
    assert env["URL"]["value"] == "nats://app:pw0@nats:4222 $(PW) $(NOPE)"
    assert c["envFrom"] == [{"configMapRef": {"name": "app-config"}}]


def test_expand_follows_the_kubelet() -> None:
    known = {"A": "1", "B": "x$(A)"}
    assert expand("$(A)-$(B)-$$(A)-$(C)-$", known) == "1-x$(A)-$(A)-$(C)-$"


def test_services_become_host_names_of_the_pods_they_select() -> None:
    setup = convert()
    nats0 = setup.workloads[0].docs[-1]["spec"]["hostAliases"]
    names = {n: a["ip"] for a in nats0 for n in a["hostnames"]}
    assert names["nats"] == names["nats.kiln.svc.cluster.local"] == "10.89.7.10"
    assert names["nats-1.nats-headless"] == names["nats-1.nats-headless.kiln.svc"] == "10.89.7.11"
    assert "web" not in names  # Service kiln/web selects the pod of namespace web-ns: none
    web = setup.workloads[-1].docs[-1]["spec"]["template"]["spec"]["hostAliases"]
    names = {n: a["ip"] for a in web for n in a["hostnames"]}
    assert "nats" not in names and names["nats.kiln"] == "10.89.7.10"  # another namespace
    assert any("kiln/web selects no pod" in n for n in setup.notes)


def test_a_service_that_moves_a_port_is_noted() -> None:
    docs_ = docs()
    docs_[-1]["metadata"]["namespace"] = "kiln"
    setup = plan(docs_, addresses=iter(f"10.1.0.{n}" for n in range(10, 20)), node_ip="10.1.0.1")
    assert setup.notes == [
        "Service kiln/nats: its name is the first of 2 pods",
        "Service kiln/web port 80 -> 8080: a host name cannot move a port; clients must use 8080",
    ]


def test_secrets_take_the_form_their_consumers_read() -> None:
    secrets = {s.name: s for s in convert().secrets}
    assert not secrets["users"].volume
    assert json.loads(secrets["users"].content) == {"app": base64.b64encode(b"pw0").decode()}
    assert secrets["keys"].volume
    assert yaml.safe_load(secrets["keys"].content)["data"] == {"key.json": "{}"}  # decoded
    volumes = convert().workloads[-1].docs[-1]["spec"]["template"]["spec"]["volumes"]
    assert volumes[0] == {"name": "keys", "secret": {"secretName": "keys", "optional": False}}


def test_images_ports_and_volumes_asked_for_by_the_bench(tmp_path: Path) -> None:
    setup = convert(
        images={"nats:2.15.1-alpine": "localhost/kiln-kubeplay/nats:2.15.1-alpine"},
        host_dirs={("web", "cache"): tmp_path / "cache"},
        publish={("web", "web/http"): 40080, ("web", "web/8086"): 40086},
    )
    assert container(setup, "nats")["image"] == "localhost/kiln-kubeplay/nats:2.15.1-alpine"
    web = setup.workloads[-1]
    assert web.published == {"web/http": 40080, "web/8086": 40086}
    ports = container(setup, "web")["ports"]
    assert ports[0] == {
        "name": "http",
        "containerPort": 8080,
        "hostPort": 40080,
        "hostIP": "127.0.0.1",
    }
    spec = web.docs[-1]["spec"]["template"]["spec"]
    assert spec["volumes"][1] == {
        "name": "cache",
        "hostPath": {"path": str(tmp_path / "cache"), "type": "DirectoryOrCreate"},
    }


def test_what_cannot_be_carried_over_is_refused() -> None:
    with pytest.raises(UnplayableError, match="DaemonSet kiln/x"):
        plan(
            [{"kind": "DaemonSet", "metadata": {"name": "x", "namespace": "kiln"}}],
            addresses=iter(()),
            node_ip="10.0.0.1",
        )
    twice = docs()
    twice[-1]["spec"]["replicas"] = 2
    with pytest.raises(UnplayableError, match="one replica"):
        plan(twice, addresses=iter(f"10.1.0.{n}" for n in range(10, 20)), node_ip="10.1.0.1")
    clash = [
        *docs(),
        {
            "kind": "ConfigMap",
            "metadata": {"name": "app-config", "namespace": "b"},
            "data": {"HOST": "other"},
        },
    ]
    with pytest.raises(UnplayableError, match="two different ConfigMaps named app-config"):
        plan(clash, addresses=iter(f"10.1.0.{n}" for n in range(10, 20)), node_ip="10.1.0.1")


def test_the_dev_overlay_converts_whole() -> None:
    """The render the e2e test plays: every workload becomes a pod, nothing is
    refused, and no $(VAR) is left for podman (which would pass it on as it is)."""
    from k8s_support import OVERLAYS, render

    setup = plan(
        render(OVERLAYS / "dev"),
        addresses=iter(f"10.1.0.{n}" for n in range(10, 40)),
        node_ip="10.1.0.1",
    )
    assert {w.name for w in setup.workloads} == {
        "nats",
        "seaweedfs",
        "storage",
        "builder",
        "publisher",
    }
    assert set(setup.converted) == {"StatefulSet", "Secret", "Service"}
    for workload in setup.workloads:
        text = yaml.safe_dump_all(workload.docs)
        assert "$(" not in text, workload.name
        assert "status.hostIP" not in text, workload.name
    names = {s.name for s in setup.secrets}
    assert {"nats-users", "storage-credentials", "publisher-endorsers"} <= names
