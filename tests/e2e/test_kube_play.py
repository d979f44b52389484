"""The dev overlay, rendered by kustomize, run for real with `podman kube play`
(podman 4.3): NATS, SeaweedFS, storage, the builder and the publisher as their
manifests say, then one build through the played services, from the real
`kiln` CLI on published loopback ports. What podman plays as it is and what
tests/kube_play_support.py converts: docs/deploy.md, section 9.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from images_support import TEST_TIMEOUT, ensure_images, podman_env
from k8s_support import OVERLAYS, render
from kube_play_support import (
    Plan,
    Workload,
    binary_image,
    create_secret,
    down,
    env_secret,
    network,
    plan,
    play,
    podman,
    remove_secret,
)
from support import REPO, kiln, wait_until

from kiln_devstack.devservers.common import find_binary, free_port

pytestmark = [pytest.mark.e2e, pytest.mark.build, pytest.mark.timeout(TEST_TIMEOUT)]

RECIPE = REPO / "tests/data/recipes/minimal.yaml"  # bootstrap only: the cheapest build
# The builder's layer cache, kept between runs in place of its emptyDir: the
# bootstrap layer (45-70 s to make) is then found at once.
BUILDER_CACHE = REPO / ".cache/kube-play/builder-cache"
IMAGE_CONTEXTS = REPO / ".cache/kube-play/images"
# The service token the builder and the publisher call storage with (README:
# issued once NATS and storage run, then given to them in this Secret).
SERVICE_TOKEN = "kiln-service-token"
SERVING = health_pb2.HealthCheckResponse.SERVING
BUILD_TIMEOUT = 900.0


def containers(docs: list[dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(workload name, container) of every workload in the rendered documents."""
    for doc in docs:
        if doc["kind"] in ("Deployment", "StatefulSet"):
            for container in doc["spec"]["template"]["spec"]["containers"]:
                yield doc["metadata"]["name"], container


def local_images(docs: list[dict[str, Any]], env: dict[str, str]) -> dict[str, str]:
    """NATS and SeaweedFS images no registry gives here: local ones with the
    host's own binaries, under names of their own (localhost/kiln-kubeplay/...)
    so no upstream image name in the shared store is shadowed by a stand-in."""
    found = dict(containers(docs))
    binaries = {"nats": ("nats-server", ["nats-server"]), "seaweedfs": ("weed", ["weed"])}
    images = {}
    for workload, (binary, entrypoint) in binaries.items():
        upstream = found[workload]["image"]
        tag = upstream.rsplit(":", 1)[1]
        local = f"localhost/kiln-kubeplay/{workload}:{tag}"
        binary_image(local, Path(find_binary(binary)), entrypoint, IMAGE_CONTEXTS / workload, env)
        images[upstream] = local
    return images


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def health_ports(docs: list[dict[str, Any]]) -> dict[str, tuple[str, str, int]]:
    """Kiln workloads: (container, gRPC service its readiness probe asks for,
    probe port) from the rendered probes."""
    found = {}
    for workload, container in containers(docs):
        probe = container.get("readinessProbe", {}).get("grpc")
        if probe:
            found[workload] = (container["name"], probe.get("service", ""), int(probe["port"]))
    return found


def serving(port: int, service: str) -> Callable[[], bool]:
    def check() -> bool:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            try:
                answer = health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(service=service), timeout=2
                )
            except grpc.RpcError:
                return False
            return bool(answer.status == SERVING)

    return check


def logs_of(workloads: list[Workload], env: dict[str, str]) -> str:
    out = []
    for workload in workloads:
        names = "{{range .Containers}}{{.Name}} {{end}}"
        found = podman("pod", "inspect", workload.pod_name, "--format", names, env=env, check=False)
        for name in found.split():
            if name.endswith("-infra"):
                continue
            tail = podman("logs", "--tail", "25", name, env=env, check=False)
            out.append(f"---- {name}\n{tail}")
    return "\n".join(out)


def test_dev_overlay_plays_under_podman_and_builds(tmp_path: Path) -> None:
    ensure_images()
    env = podman_env()
    docs = render(OVERLAYS / "dev")
    images = local_images(docs, env)
    probes = health_ports(docs)
    publish: dict[tuple[str, str], int] = {}
    for workload, (container, _service, port) in probes.items():
        publish[(workload, f"{container}/{port}")] = free_port(set(publish.values()))
        publish[(workload, f"{container}/grpc")] = free_port(set(publish.values()))
    # docs/deploy.md, "Apply an overlay": downloads from outside the cluster
    # reach S3 at another address, set in storage-config (here: SeaweedFS's S3
    # port, published on loopback).
    s3_port = free_port(set(publish.values()))
    publish[("seaweedfs", "seaweedfs/s3")] = s3_port
    for doc in docs:
        if doc["kind"] == "ConfigMap" and doc["metadata"]["name"] == "storage-config":
            doc["data"]["KILN_STORAGE_S3_PUBLIC_ENDPOINT"] = f"127.0.0.1:{s3_port}"
    BUILDER_CACHE.mkdir(parents=True, exist_ok=True)
    host_dirs = {
        ("builder", "cache"): BUILDER_CACHE,
        # A node path (hostPath) shared by every builder pod of a node: this run's own.
        ("builder", "outbox"): tmp_path / "node/var/lib/kiln/outbox",
    }
    files = tmp_path / "play"
    files.mkdir()

    with ExitStack() as stack:
        net = stack.enter_context(network(f"kiln-kubeplay-{os.getpid()}", env))
        setup = plan(
            docs,
            addresses=net.addresses(),
            node_ip=net.gateway,
            images=images,
            host_dirs=host_dirs,
            publish=publish,
        )
        print_plan(setup)
        played: list[Workload] = []

        def play_one(workload: Workload) -> None:
            path = files / f"{workload.pod_name}.yaml"
            stack.callback(down, workload, path, env)
            played.append(workload)
            play(workload, files, net, env)

        for secret in setup.secrets:
            stack.callback(remove_secret, secret, env)
            create_secret(secret, files, env)
        try:
            started = time.monotonic()
            first = [w for w in setup.workloads if not w.uses_secret(SERVICE_TOKEN)]
            later = [w for w in setup.workloads if w.uses_secret(SERVICE_TOKEN)]
            for workload in first:
                play_one(workload)
            storage = setup.workload("storage")
            wait_healthy(storage, probes, timeout=120)

            # README "Identities", with podman exec for kubectl exec.
            issue = ["exec", storage.container("storage"), "python", "-m", "kiln_common.auth.issue"]
            admin = podman(*issue, "--tenant", "ops", "--role", "admin", env=env).split()[-1]
            service = podman(*issue, "--tenant", "kiln", "--role", "service", env=env).split()[-1]
            token = env_secret(SERVICE_TOKEN, {"token": service})
            stack.callback(remove_secret, token, env)
            create_secret(token, files, env)

            for workload in later:
                play_one(workload)
            for workload in [*first, *later]:
                if workload.name in probes:
                    wait_healthy(workload, probes, timeout=180)
            ready = time.monotonic()

            cli = {
                **os.environ,
                "KILN_HOME": str(tmp_path / "kiln-home"),
                "KILN_BUILDER": f"127.0.0.1:{publish[('builder', 'builder/grpc')]}",
                "KILN_STORAGE": f"127.0.0.1:{publish[('storage', 'storage/grpc')]}",
                "KILN_PUBLISHER": f"127.0.0.1:{publish[('publisher', 'publisher/grpc')]}",
                "KILN_TOKEN": admin,
            }
            submitted = kiln(cli, "build", "submit", str(RECIPE), "--no-boot-test", "--json")
            build_id = json.loads(submitted.stdout)["id"]
            record = wait_until("the build to end", finished(cli, build_id), BUILD_TIMEOUT, 2)
            built = time.monotonic()
            assert record["state"].lower().endswith("succeeded"), json.dumps(record, indent=1)
            images_built = [a for a in record.get("artifacts", []) if a["kind"] == "image"]
            assert images_built, json.dumps(record, indent=1)
            for artifact in images_built:  # stored: storage has it, with the same bytes' sums
                shown = json.loads(
                    kiln(cli, "artifact", "show", artifact["artifact_id"], "--json").stdout
                )
                assert int(shown["size"]) == int(artifact["size"]) > 0, (shown, artifact)
                assert shown["checksums"]["sha256"] == artifact["sha256"], (shown, artifact)
                copy = tmp_path / artifact["name"]  # the bytes, through a presigned S3 URL
                kiln(cli, "artifact", "get", artifact["artifact_id"], "-o", str(copy))
                assert sha256_of(copy) == artifact["sha256"]
                copy.unlink()
            # Every container ran through without a restart (an OOM kill at a
            # manifest's memory limit, say, which podman's restart would hide).
            restarts = restarted(played, env)
            assert not restarts, f"containers restarted (name, restarts, OOM-killed): {restarts}"
            report = (
                f"kube play -> all SERVING: {ready - started:.0f}s; "
                f"-> build {build_id} succeeded: {built - started:.0f}s "
                f"(build alone {built - ready:.0f}s)"
            )
            print(report)
            (tmp_path / "timings.txt").write_text(report + "\n")
        except BaseException:
            print(logs_of(played, env))
            raise


def restarted(workloads: list[Workload], env: dict[str, str]) -> list[str]:
    found = []
    template = "{{range .Containers}}{{.Name}} {{end}}"
    for workload in workloads:
        names = podman("pod", "inspect", workload.pod_name, "--format", template, env=env)
        for name in names.split():
            state = podman(
                "container",
                "inspect",
                name,
                "--format",
                "{{.RestartCount}} {{.State.OOMKilled}}",
                env=env,
            ).split()
            if state[-2:] != ["0", "false"]:
                found.append(f"{name}: {' '.join(state[-2:])}")
    return found


def wait_healthy(
    workload: Workload, probes: dict[str, tuple[str, str, int]], timeout: float
) -> None:
    container, service, port = probes[workload.name]
    host_port = workload.published[f"{container}/{port}"]
    wait_until(f"{workload.name} SERVING {service}", serving(host_port, service), timeout, 1)


def finished(cli: dict[str, str], build_id: str) -> Callable[[], dict[str, Any] | None]:
    """The build's record once it ended. A `kiln build show` that fails is
    printed (the log of a failed run shows it) and asked again: the build is
    what is tested, through its terminal state."""

    def check() -> dict[str, Any] | None:
        shown = kiln(cli, "build", "show", build_id, "--json", check=False)
        if shown.returncode != 0:
            print(f"kiln build show exited {shown.returncode}: {shown.stderr.strip()}")
            return None
        record: dict[str, Any] = json.loads(shown.stdout)
        state = str(record.get("state", "")).lower()
        return record if state.endswith(("succeeded", "failed", "cancelled")) else None

    return check


def print_plan(setup: Plan) -> None:
    for workload in setup.workloads:
        print(
            f"{workload.kind} {workload.namespace}/{workload.name} -> pod {workload.pod_name} "
            f"at {workload.ip}, published {workload.published}"
        )
    print("converted:", setup.converted)
    print("left out:", setup.left_out)
    for note in setup.notes:
        print("note:", note)
