"""Offline checks of services/*/Containerfile against the repository and deploy/k8s:
what each COPY names exists, the image's user is the one the pod runs as, the
ports it binds by default are the ones it exposes and the manifests name. Building
and running the images is scripts/build-images.sh and scripts/smoke_images.py."""

from __future__ import annotations

import re

import pytest
import yaml
from support import REPO

from kiln_common.health_probe import service_address

SERVICES = ("storage", "builder", "publisher")
# The uid each image runs as: the builder is root by design (loop devices, mounts).
UIDS = {"storage": 10001, "publisher": 10001, "builder": 0}


def instructions(service: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Containerfile, continuation lines joined."""
    text = (REPO / "services" / service / "Containerfile").read_text()
    joined = re.sub(r"\\\n", " ", text)
    found = []
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            found.append((word.upper(), rest.strip()))
    return found


def final_stage(service: str) -> list[tuple[str, str]]:
    steps = instructions(service)
    last = max(i for i, (word, _) in enumerate(steps) if word == "FROM")
    return steps[last:]


def deployment_container(service: str) -> tuple[dict, dict]:  # type: ignore[type-arg]
    doc = yaml.safe_load((REPO / "deploy/k8s/base" / service / "deployment.yaml").read_text())
    spec = doc["spec"]["template"]["spec"]
    return spec, spec["containers"][0]


def env_of(steps: list[tuple[str, str]]) -> dict[str, str]:
    env: dict[str, str] = {}
    for word, rest in steps:
        if word == "ENV":
            env.update(dict(re.findall(r"(\w+)=(\S+)", rest)))
    return env


@pytest.mark.parametrize("service", SERVICES)
def test_every_copied_path_exists_in_the_build_context(service: str) -> None:
    for word, rest in instructions(service):
        if word == "COPY" and "--from=" not in rest:
            source = rest.split()[0]
            assert (REPO / source).exists(), f"{service}: COPY {source}: not in the repository"


@pytest.mark.parametrize("service", SERVICES)
def test_image_runs_as_the_user_the_pod_runs_as(service: str) -> None:
    users = [rest for word, rest in final_stage(service) if word == "USER"]
    uid = int(users[-1].split(":")[0]) if users else 0
    assert uid == UIDS[service]
    spec, container = deployment_container(service)
    context = {**spec.get("securityContext", {}), **container.get("securityContext", {})}
    assert context.get("runAsUser", uid) == uid


@pytest.mark.parametrize("service", SERVICES)
def test_default_binds_are_exposed_and_are_the_pods_ports(service: str) -> None:
    steps = final_stage(service)
    exposed = {int(p) for word, rest in steps if word == "EXPOSE" for p in rest.split()}
    env = env_of(steps)
    binds = {
        int(v.rsplit(":", 1)[1])
        for k, v in env.items()
        if k.endswith(("_GRPC_BIND", "_HEALTH_BIND"))
    }
    binds |= {int(v) for k, v in env.items() if k.endswith("_HTTP_PORT")}
    _, container = deployment_container(service)
    ports = {p["containerPort"] for p in container["ports"]}
    # The pod may leave one out: storage on S3 serves no downloads of its own.
    assert binds and binds == exposed >= ports, (service, binds, exposed, ports)
    grpc_port = int(env[f"KILN_{service.upper()}_GRPC_BIND"].rsplit(":", 1)[1])
    assert grpc_port in ports


@pytest.mark.parametrize("service", SERVICES)
def test_runtime_stage_carries_no_compiler_or_package_cache(service: str) -> None:
    runs = " ".join(rest for word, rest in final_stage(service) if word == "RUN")
    assert "rm -rf /var/lib/apt/lists/*" in runs
    for tool in ("gcc", "python3-dev", "python3-venv", "libvirt-dev", "pkg-config"):
        assert tool not in runs, f"{service}: {tool} in the runtime stage"


OCI_LABELS = ("title", "description", "version", "revision")


def test_the_health_probe_finds_the_address_the_service_was_told() -> None:
    env = {"KILN_PUBLISHER_HEALTH_BIND": "", "KILN_PUBLISHER_GRPC_BIND": "127.0.0.1:6001"}
    assert service_address("publisher", env) == "127.0.0.1:6001"  # host network: its own bind
    assert service_address("builder", {"KILN_BUILDER_HEALTH_BIND": "0.0.0.0:8086"}) == (
        "127.0.0.1:8086"
    )
    assert service_address("storage", {}) == "127.0.0.1:50051"


@pytest.mark.parametrize("service", SERVICES)
def test_the_image_checks_its_grpc_health_and_carries_oci_labels(service: str) -> None:
    steps = final_stage(service)
    checks = [rest for word, rest in steps if word == "HEALTHCHECK"]
    assert len(checks) == 1, f"{service}: one HEALTHCHECK in the runtime stage"
    assert f'"kiln_common.health_probe", "--service", "{service}"' in checks[0], checks[0]
    # Probed where the image's settings say its health serves.
    health_bind = env_of(steps)[f"KILN_{service.upper()}_HEALTH_BIND"]
    port = health_bind.rsplit(":", 1)[1]
    assert service_address(service, env_of(steps)) == f"127.0.0.1:{port}"
    labels = " ".join(rest for word, rest in steps if word == "LABEL")
    for key in OCI_LABELS:
        assert f"org.opencontainers.image.{key}=" in labels, f"{service}: no {key} label"


def test_the_health_probe_says_serving_only_for_a_serving_service() -> None:
    import asyncio

    from kiln_common.grpc_server import GrpcServer
    from kiln_common.health_probe import serving

    async def probe() -> tuple[bool, bool]:
        server = GrpcServer("127.0.0.1:0", ["kiln.test"], lambda _: None)
        port = await server.start()
        try:
            up = await asyncio.to_thread(serving, f"127.0.0.1:{port}", 2.0)
        finally:
            await server.stop(0)
        down = await asyncio.to_thread(serving, f"127.0.0.1:{port}", 1.0)
        return up, down

    assert asyncio.run(probe()) == (True, False)
