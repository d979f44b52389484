"""`kiln up` / `kiln down`: a local Kiln on loopback (nats-server and the
services), state and logs under KILN_HOME (default ~/.kiln)."""

from __future__ import annotations

import json
import os
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

from kiln_common.devservers import ServerError, free_port, start_nats, wait_grpc_health
from kiln_common.proc import pid_alive, spawn, stop_pid
from kiln_common.settings import default_cache_dir

READY_TIMEOUT = 120.0  # the builder may start libvirtd and reclaim dead builds first


class StackError(ServerError):
    """The stack cannot start or be found; printed as it is."""


def kiln_home() -> Path:
    return Path(os.environ.get("KILN_HOME") or Path.home() / ".kiln")


@dataclass
class Stack:
    home: str
    nats_url: str
    storage: str
    storage_http: str
    builder: str = ""
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


def up(home: Path) -> Stack:
    """Starts nats-server, the storage service and the builder (service and
    one worker); returns once all are healthy. A half-started stack is
    stopped again before the error is raised."""
    current = Stack.load(home)
    if current is not None and current.alive():
        return current
    if current is not None:
        down(home)  # stale: some of it died
    home.mkdir(parents=True, exist_ok=True)
    logs = home / "logs"
    grpc_port, http_port = free_port(), free_port()
    stack = Stack(
        home=str(home),
        nats_url="",
        storage=f"127.0.0.1:{grpc_port}",
        storage_http=f"http://127.0.0.1:{http_port}",
        builder=f"127.0.0.1:{free_port()}",
    )
    try:
        nats = start_nats(home / "nats", logs / "nats.log")
        stack.nats_url = nats.url
        stack.pids["nats"] = nats.pid
        stack.save()
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
        wait_grpc_health(stack.storage, storage.pid, logs / "storage.log", READY_TIMEOUT)
        stack.pids["builder"] = start_builder(stack, stack.builder, logs / "builder.log")
        stack.save()
    except BaseException:
        down(home)
        raise
    return stack


def builder_env(stack: Stack) -> dict[str, str]:
    """The builder of a local stack: one worker, workspaces under KILN_HOME,
    the machine's layer cache (shared with `kiln-builder bake`)."""
    env = {
        "KILN_BUILDER_GRPC_BIND": stack.builder,
        "KILN_BUILDER_NATS_URL": stack.nats_url,
        "KILN_BUILDER_STORAGE": stack.storage,
        "KILN_BUILDER_WORK_ROOT": str(Path(stack.home) / "work"),
        "KILN_BUILDER_CACHE_DIR": str(default_cache_dir()),
    }
    # The builder's own settings, given to `kiln up`, pass through.
    env.update({k: v for k, v in os.environ.items() if k.startswith("KILN_BUILDER_")})
    return env


def start_builder(
    stack: Stack, address: str, log: Path, extra: dict[str, str] | None = None
) -> int:
    """Starts a builder (API and worker) on the stack's NATS and storage,
    serving at address; returns its pid once it is healthy. `kiln up` starts
    one; tests and benchmarks start more, named by KILN_BUILDER_WORKER_NAME."""
    env = {**builder_env(stack), "KILN_BUILDER_GRPC_BIND": address, **(extra or {})}
    proc = spawn([sys.executable, "-m", "kiln_builder", "serve"], log_file=log, env=env)
    try:
        wait_grpc_health(address, proc.pid, log, READY_TIMEOUT)
    except BaseException:
        stop_pid(proc.pid)
        raise
    return proc.pid


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
    return _address(home, "storage")


def builder_address(home: Path) -> str:
    """Where the builder service is: KILN_BUILDER, else the running stack."""
    return _address(home, "builder")


def _address(home: Path, service: str) -> str:
    variable = f"KILN_{service.upper()}"
    if os.environ.get(variable):
        return os.environ[variable]
    stack = Stack.load(home)
    if stack is None or not stack.alive():
        raise StackError(f"Kiln is not running: start it with `kiln up` (or set {variable})")
    return str(getattr(stack, service))
