"""Kiln's service images run with testcontainers, through podman's
Docker-compatible API (tests/e2e/test_containers.py).

`podman_api()` runs `podman system service` on a unix socket in a temporary
directory (with the CONTAINERS_CONF build-images.sh wrote, which every podman
process here needs) and points testcontainers at it: DOCKER_HOST, Ryuk off (its
image cannot be pulled: no registry is reachable), the docker_host connection
mode (this machine has a /.dockerenv, which otherwise sends testcontainers
looking for a container network). Without Ryuk nothing reaps what a test leaves:
each container is removed by its `with` block, and every container this session
labelled is removed with the podman CLI when the API's block ends, however it
ends (even if the service itself died).
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker  # type: ignore[import-untyped]  # docker-py ships no types
import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from images_support import podman_env
from support import wait_until
from testcontainers.core.config import ConnectionMode
from testcontainers.core.config import testcontainers_config as tc_config
from testcontainers.core.container import DockerContainer
from testcontainers.core.labels import LABEL_SESSION_ID, SESSION_ID

from kiln_common.proc import run_sync, spawn
from kiln_devstack.devservers import stopping

API_TIMEOUT = 30.0  # the service answers /_ping in about a second


def podman(*args: str, check: bool = True, timeout: float = 120) -> str:
    """The podman CLI, for what the Docker API lacks (`healthcheck run`) and cleanup."""
    return run_sync(["podman", *args], env=podman_env(), check=check, timeout=timeout).stdout


@contextlib.contextmanager
def podman_api(where: Path) -> Iterator[str]:
    """`podman system service` on where/podman.sock, testcontainers pointed at
    it; yields its DOCKER_HOST URL. Stopped, and this session's containers
    removed, when the block ends."""
    sock = where / "podman.sock"
    url = f"unix://{sock}"
    service = spawn(
        ["podman", "system", "service", "--time=0", url],
        log_file=where / "podman-service.log",
        env=podman_env(),
    )
    with contextlib.ExitStack() as stack:
        stack.enter_context(stopping(service.pid))
        stack.callback(remove_session_containers)

        def answers() -> bool:
            if service.poll() is not None:
                log = (where / "podman-service.log").read_text(errors="replace")
                raise AssertionError(f"podman system service exited {service.returncode}:\n{log}")
            # The client asks the API's version as it is made: made in the loop.
            with (
                contextlib.suppress(docker.errors.DockerException, OSError),
                contextlib.closing(docker.DockerClient(base_url=url, timeout=10)) as client,
            ):
                return bool(client.ping())
            return False

        wait_until("podman's Docker API to answer", answers, timeout=API_TIMEOUT, interval=0.2)
        stack.enter_context(testcontainers_on(url))
        yield url


@contextlib.contextmanager
def testcontainers_on(url: str) -> Iterator[None]:
    """testcontainers' settings for podman at url, put back afterwards. Its
    configuration object read the environment when it was imported: set both."""
    saved_env = {k: os.environ.get(k) for k in ("DOCKER_HOST", "TESTCONTAINERS_RYUK_DISABLED",
                                                "TESTCONTAINERS_CONNECTION_MODE")}  # fmt: skip
    saved = (tc_config.ryuk_disabled, tc_config.connection_mode_override)
    os.environ.update(DOCKER_HOST=url, TESTCONTAINERS_RYUK_DISABLED="true",
                      TESTCONTAINERS_CONNECTION_MODE=ConnectionMode.docker_host.value)  # fmt: skip
    tc_config.ryuk_disabled = True
    tc_config.connection_mode_override = ConnectionMode.docker_host
    try:
        yield
    finally:
        tc_config.ryuk_disabled, tc_config.connection_mode_override = saved
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def remove_session_containers() -> None:
    """Every container testcontainers made in this session (it labels them),
    removed with its anonymous volumes: the cleanup Ryuk would have done."""
    ids = podman("ps", "-a", "-q", "--filter", f"label={LABEL_SESSION_ID}={SESSION_ID}",
                 check=False).split()  # fmt: skip
    if ids:
        podman("rm", "-f", "-v", "-t", "0", *ids, check=False)


class KilnContainer(DockerContainer):
    """A DockerContainer whose published ports bind to 127.0.0.1 only."""

    def publish_on_loopback(self, container_port: int, host_port: int) -> KilnContainer:
        # docker-py takes (address, port) for a port bound to one address;
        # testcontainers' own with_bind_ports binds every address.
        ports: dict[str, Any] = self.ports
        ports[f"{container_port}/tcp"] = ("127.0.0.1", host_port)
        return self

    @property
    def id(self) -> str:
        return self.get_container_id()

    def attrs(self) -> dict[str, Any]:
        wrapped = self.get_wrapped_container()
        wrapped.reload()
        return dict(wrapped.attrs)

    def running(self) -> bool:
        return bool(self.attrs()["State"]["Running"])

    def tail(self, lines: int = 30) -> str:
        out = self.get_wrapped_container().logs(tail=lines)
        return bytes(out).decode(errors="replace")

    def run(self, *argv: str) -> str:
        """argv in the container; its output. Fails on a non-zero exit."""
        result = self.exec(list(argv))
        output = result.output.decode(errors="replace")
        assert result.exit_code == 0, (
            f"{argv} exited {result.exit_code} in {self.id[:12]}:\n{output}"
        )
        return output

    def process_uid(self) -> int:
        """The uid the container's first process (the service) runs as."""
        status = self.run("cat", "/proc/1/status")
        return int(next(line.split()[1] for line in status.splitlines() if line.startswith("Uid:")))


def wait_serving(container: KilnContainer, address: str, timeout: float = 90) -> None:
    """Until grpc.health.v1 at address says SERVING; fails at once, with the
    container's log, if the container exits first."""
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)

        def serving() -> bool:
            with contextlib.suppress(grpc.RpcError):
                reply = stub.Check(health_pb2.HealthCheckRequest(), timeout=1)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return True
            assert container.running(), f"the container exited:\n{container.tail()}"
            return False

        wait_until(f"SERVING at {address}", serving, timeout=timeout, interval=0.2)


def healthcheck(container: KilnContainer) -> str:
    """Runs the image's HEALTHCHECK as podman runs it (no systemd timer runs it
    here) and returns the health status the Docker API then reports."""
    podman("healthcheck", "run", container.id)  # exits 1 when unhealthy
    return str(container.attrs()["State"]["Health"]["Status"])


@dataclass(frozen=True)
class Stopped:
    status: int
    seconds: float


def stop_with_sigterm(container: KilnContainer, grace: float) -> Stopped:
    """SIGTERM, then wait up to grace for the container to exit (no SIGKILL:
    a container still running then fails the caller's assertion)."""
    wrapped = container.get_wrapped_container()
    start = time.monotonic()
    wrapped.kill(signal="SIGTERM")
    try:
        result = wrapped.wait(timeout=grace)
    except Exception as exc:  # requests' ReadTimeout: still running
        raise AssertionError(
            f"{container.id[:12]} still running {grace:.0f}s after SIGTERM:\n{container.tail()}"
        ) from exc
    return Stopped(int(result["StatusCode"]), time.monotonic() - start)


@dataclass(frozen=True)
class ImageFacts:
    size: int
    labels: dict[str, str]
    healthcheck: list[str]


def image_id(tag: str) -> str:
    return podman("image", "inspect", "--format", "{{.Id}}", tag).strip()


def image_facts(tag: str) -> ImageFacts:
    with contextlib.closing(docker.from_env()) as client:  # DOCKER_HOST: podman_api's
        found = client.images.get(tag)
    # podman 4.3's Docker API leaves the HEALTHCHECK out of an image's inspect.
    native = json.loads(podman("image", "inspect", tag))[0]
    return ImageFacts(
        int(found.attrs["Size"]),
        dict(found.labels),
        list((native.get("Healthcheck") or {}).get("Test") or []),
    )


def writable_by(path: Path, uid: int) -> Path:
    """A host directory a container's non-root user may write (its volume)."""
    path.mkdir(parents=True, exist_ok=True)
    os.chown(path, uid, uid)
    return path
