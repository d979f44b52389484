"""Smoke check of the images scripts/build-images.sh built: each one runs with podman,
set up as deploy/k8s runs it, and must answer.

    .venv/bin/python scripts/smoke_images.py [storage|builder|publisher]...

A real nats-server runs on the host (loopback, a free port). storage runs on the
default network with its ports published on 127.0.0.1; publisher and builder,
which reach that NATS and storage on the host's loopback, share the host's
network and bind 127.0.0.1. Per image it checks the user its process runs as,
gRPC health (SERVING), the image's HEALTHCHECK and OCI version label, its own
check (storage: an upload downloaded over HTTP; publisher: that upload
published to the marketplace and listed on the HTML catalogue page, HTTP 200;
builder: its tools and its libvirtd), a graceful stop on SIGTERM (exit status
0), and prints the image's size. Exit status 0 when all pass.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from kiln_client import ClientError, PublisherClient, StorageClient
from kiln_common.proc import ProcessError, run_sync
from kiln_common.publications import MarketplaceTarget, PublicationState, PublishRequest
from kiln_devstack.devservers import ServerError, free_port, start_nats, stopping

ROOT = Path(__file__).resolve().parent.parent
KILN_CONF = ROOT / ".cache/images/containers.conf"


class SmokeError(Exception):
    """A check failed: the message says which and why."""


@dataclass(frozen=True)
class Ctx:
    nats_url: str
    ports: dict[str, int]  # host ports: each service's gRPC, and storage-http, publisher-http
    artifacts: list[str]  # what the storage check stored

    @property
    def storage(self) -> str:
        return f"127.0.0.1:{self.ports['storage']}"


def podman(*args: str, check: bool = True, timeout: float = 120) -> str:
    # The Kiln-local containers.conf, where build-images.sh found podman's own wanting.
    conf = os.environ.get("CONTAINERS_CONF") or (str(KILN_CONF) if KILN_CONF.is_file() else "")
    env = {"CONTAINERS_CONF": conf} if conf else {}
    return run_sync(["podman", *args], env=env, check=check, timeout=timeout).stdout.strip()


def version(service: str) -> str:
    for line in (ROOT / f"services/{service}/pyproject.toml").read_text().splitlines():
        if line.startswith("version = "):
            return line.split('"')[1]
    raise SmokeError(f"no version in services/{service}/pyproject.toml")


@contextlib.contextmanager
def container(name: str, image: str, args: list[str]) -> Iterator[str]:
    """A detached container, removed (with its anonymous volumes) however the block ends."""
    podman("run", "-d", "--name", name, *args, image)
    try:
        yield name
    finally:
        podman("rm", "-f", "-v", "-t", "5", name, check=False)


def logs(name: str) -> str:
    return "\n".join(podman("logs", name, check=False).splitlines()[-15:])


def wait_healthy(name: str, address: str, timeout: float = 90) -> float:
    """Seconds until grpc.health.v1 says SERVING; fails at once if the container exits."""
    start = time.monotonic()
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() - start < timeout:
            with contextlib.suppress(grpc.RpcError):
                reply = stub.Check(health_pb2.HealthCheckRequest(), timeout=1)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return time.monotonic() - start
            if podman("inspect", "--format", "{{.State.Running}}", name) != "true":
                raise SmokeError(f"{name} exited during start-up:\n{logs(name)}")
            time.sleep(0.5)
    raise SmokeError(f"{name} not SERVING on {address} within {timeout:.0f}s:\n{logs(name)}")


def process_uid(name: str) -> int:
    status = podman("exec", name, "cat", "/proc/1/status")
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("Uid:")))


def http_get(url: str) -> tuple[int, bytes]:
    with urllib.request.urlopen(url, timeout=10) as reply:
        return int(reply.status), reply.read()


def graceful_stop(name: str) -> None:
    podman("stop", "-t", "30", name)
    code = podman("inspect", "--format", "{{.State.ExitCode}}", name)
    if code != "0":
        raise SmokeError(f"{name} exited {code} on SIGTERM (0 expected):\n{logs(name)}")


# Settings as deploy/k8s gives them: non-root, read-only root, no capabilities, /tmp writable.
LOCKED = ["--read-only", "--tmpfs", "/tmp", "--cap-drop", "ALL", "--security-opt",
          "no-new-privileges"]  # fmt: skip


def expect_uid(name: str, want: int) -> str:
    uid = process_uid(name)
    if uid != want:
        raise SmokeError(f"{name} runs as uid {uid}, {want} expected")
    return f"runs as uid {uid}"


def check_storage(name: str, ctx: Ctx) -> list[str]:
    notes = [expect_uid(name, 10001)]
    data = secrets.token_bytes(256 * 1024)
    with tempfile.TemporaryDirectory() as tmp, StorageClient(ctx.storage) as client:
        path = Path(tmp, "smoke.bin")
        path.write_bytes(data)
        artifact = client.push(path, {"name": "smoke", "format": "raw"})
        ctx.artifacts.append(artifact.id)
        url = client.url(artifact.id)
    status, body = http_get(url)
    if status != 200 or body != data:
        raise SmokeError(f"download of {url}: HTTP {status}, {len(body)} bytes (256 KiB sent)")
    notes.append("an upload downloads over HTTP, same bytes")
    return notes


def publish_entry(ctx: Ctx, timeout: float = 60) -> str:
    """Publishes storage's artifact to the marketplace (signed by the local endorser,
    whose key the publisher made on its volume); returns the entry's identifier."""
    request = PublishRequest(
        artifact_id=ctx.artifacts[0], marketplace=MarketplaceTarget(title="Kiln smoke")
    )
    deadline = time.monotonic() + timeout
    with PublisherClient(f"127.0.0.1:{ctx.ports['publisher']}") as client:
        pub = client.publish(request)
        while pub.state not in (PublicationState.DONE, PublicationState.FAILED):
            if time.monotonic() > deadline:
                raise SmokeError(f"publication {pub.id} not finished within {timeout:.0f}s")
            time.sleep(0.5)
            pub = client.publication(pub.id)
    if pub.state != PublicationState.DONE or not pub.results:
        raise SmokeError(f"publication {pub.id} failed: {[r.error for r in pub.results]}")
    return str(pub.results[0].entry_identifier)


def check_publisher(name: str, ctx: Ctx) -> list[str]:
    notes = [expect_uid(name, 10001)]
    identifier = publish_entry(ctx)
    status, body = http_get(f"http://127.0.0.1:{ctx.ports['publisher-http']}/")
    if status != 200 or b"<html" not in body.lower():
        raise SmokeError(f"catalogue page: HTTP {status}, not an HTML page")
    if identifier.encode() not in body:
        raise SmokeError(f"catalogue page does not list the entry {identifier} just published")
    notes.append(f"entry {identifier} signed and listed on the catalogue page (HTTP {status})")
    return notes


def check_builder(name: str, ctx: Ctx) -> list[str]:
    # Root and privileged by design: loop devices, mounts, bubblewrap, libvirtd.
    notes = [expect_uid(name, 0)]
    tools = ["mmdebstrap", "bwrap", "qemu-img", "qemu-system-x86_64", "virsh", "mkfs.ext4"]
    podman("exec", name, "sh", "-c", " && ".join(f"command -v {t} >/dev/null" for t in tools))
    notes.append("tools on PATH: " + ", ".join(tools))
    # The boot test's libvirtd, which the service starts in its own container.
    libvirt = podman("exec", name, "virsh", "-c", "qemu:///system", "version", "--daemon")
    daemon = [line for line in libvirt.splitlines() if line.startswith("Running against daemon")]
    if not daemon:
        raise SmokeError(f"libvirtd does not answer in {name}:\n{libvirt}")
    notes.append(f"libvirtd {daemon[0].split()[-1]} answers")
    return notes


def run_args(service: str, ctx: Ctx) -> list[str]:
    """podman run arguments: as deploy/k8s runs the service, on ports free here."""
    if service == "storage":
        grpc_port, http_port = ctx.ports["storage"], ctx.ports["storage-http"]
        return [*LOCKED, "--volume", "/var/lib/kiln/storage",
                "-p", f"127.0.0.1:{grpc_port}:50051", "-p", f"127.0.0.1:{http_port}:8081",
                "-e", f"KILN_STORAGE_PUBLIC_URL=http://127.0.0.1:{http_port}"]  # fmt: skip
    if service == "publisher":
        return [*LOCKED, "--network", "host", "--volume", "/var/lib/kiln/publisher",
                "-e", f"KILN_PUBLISHER_GRPC_BIND=127.0.0.1:{ctx.ports['publisher']}",
                "-e", "KILN_PUBLISHER_HEALTH_BIND=",  # the host's network: no fixed port
                "-e", "KILN_PUBLISHER_HTTP_HOST=127.0.0.1",
                "-e", f"KILN_PUBLISHER_HTTP_PORT={ctx.ports['publisher-http']}",
                "-e", f"KILN_PUBLISHER_NATS_URL={ctx.nats_url}",
                "-e", f"KILN_PUBLISHER_STORAGE={ctx.storage}",
                "-e", "KILN_PUBLISHER_LOCAL_ENDORSER=smoke@example.org"]  # fmt: skip
    return ["--privileged", "--network", "host",
            "-e", f"KILN_BUILDER_GRPC_BIND=127.0.0.1:{ctx.ports['builder']}",
            "-e", "KILN_BUILDER_HEALTH_BIND=",  # the host's network: no fixed port
            "-e", f"KILN_BUILDER_NATS_URL={ctx.nats_url}",
            "-e", f"KILN_BUILDER_STORAGE={ctx.storage}"]  # fmt: skip


CHECKS: dict[str, Callable[[str, Ctx], list[str]]] = {
    "storage": check_storage,
    "publisher": check_publisher,
    "builder": check_builder,
}


def smoke(service: str, ctx: Ctx, stack: contextlib.ExitStack) -> str:
    """Starts the service's container (left running in stack for the services
    after it), checks it, prints one line and returns the container's name."""
    image = f"kiln/{service}:{version(service)}"
    size = int(podman("image", "inspect", "--format", "{{.Size}}", image))
    name = f"kiln-smoke-{service}-{secrets.token_hex(3)}"
    stack.enter_context(container(name, image, run_args(service, ctx)))
    healthy = wait_healthy(name, f"127.0.0.1:{ctx.ports[service]}")
    # The image's own HEALTHCHECK (kiln_common.health_probe), run as podman runs it.
    podman("healthcheck", "run", name)
    labels = podman("image", "inspect", "--format",
                    '{{index .Labels "org.opencontainers.image.version"}}', image)  # fmt: skip
    notes = [f"{size / 1e6:.0f} MB", f"SERVING in {healthy:.1f}s", "HEALTHCHECK healthy",
             f"labelled {labels}", *CHECKS[service](name, ctx)]  # fmt: skip
    print(f"smoke {image}: " + "; ".join(notes), flush=True)
    return name


def main(argv: list[str]) -> int:
    wanted = argv or ["storage", "publisher", "builder"]
    unknown = set(wanted) - set(CHECKS)
    if unknown:
        print(f"smoke: unknown service {', '.join(sorted(unknown))}", file=sys.stderr)
        return 2
    # storage runs first whatever was asked: the publisher and builder need it.
    services = ["storage", *[s for s in ("publisher", "builder") if s in wanted]]
    ports: dict[str, int] = {}
    for key in (*services, "storage-http", "publisher-http"):
        ports[key] = free_port(set(ports.values()))
    try:
        with (
            tempfile.TemporaryDirectory(prefix="kiln-smoke-") as tmp,
            contextlib.ExitStack() as stack,
        ):
            nats = start_nats(Path(tmp, "nats"), Path(tmp, "nats.log"))
            stack.enter_context(stopping(nats.pid))
            ctx = Ctx(nats.url, ports, [])
            names = [smoke(service, ctx, stack) for service in services]
            # Stop in reverse (dependants first), each must exit 0 on SIGTERM.
            for name in reversed(names):
                graceful_stop(name)
            print(f"smoke: SIGTERM stops {len(names)} containers with exit status 0")
    except (SmokeError, ProcessError, ServerError, ClientError, OSError) as exc:
        print(f"smoke: FAILED: {exc}", file=sys.stderr)
        return 1
    print("smoke: all passed")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
