"""The local stack behind `kiln up` / `kiln down`: nats-server and the
services on loopback, state and logs under KILN_HOME (default ~/.kiln). The
CLI, the end-to-end tests and the benchmarks all start services through here.

`kiln up` on a stack of which one part died starts only that part again, on
the same ports and data directory, so the clients and the other services
(which keep reconnecting) carry on where they were."""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import os
import secrets
import sys
from pathlib import Path

import nats

from kiln_common.auth import Role
from kiln_common.auth.static import StaticTokens
from kiln_common.errors import Unauthenticated
from kiln_common.home import (
    LOCAL_TENANT,
    NATS_USERS_FILE,
    SERVICE_TOKEN_FILE,
    TLS_DIR,
    TOKEN_FILE,
    Stack,
    kiln_home,
)
from kiln_common.nats_access import ADMIN, SERVICES
from kiln_common.proc import pid_alive, spawn, stop_pid
from kiln_common.settings import default_cache_dir
from kiln_devstack.devservers import (
    ServerError,
    free_port,
    port_of,
    start_nats,
    user_url,
    wait_grpc_health,
)
from kiln_devstack.local_ca import make_local_tls

READY_TIMEOUT = 120.0  # the builder may start libvirtd and reclaim dead builds first
PARTS = ("nats", "storage", "builder", "publisher")  # in start order; stopped in reverse

__all__ = [
    "PARTS",
    "Stack",
    "StackError",
    "down",
    "kiln_home",
    "start_builder",
    "start_storage",
    "up",
]


class StackError(ServerError):
    """The stack cannot start or be found; printed as it is."""


def up(home: Path, tls: bool = False) -> Stack:
    """Starts nats-server, the storage service and the builder (service and
    one worker); returns once all are healthy. Parts still running are kept
    and dead ones started again in place. A fresh stack that fails half-way
    is stopped again before the error is raised. With tls, a fresh stack's
    servers serve gRPC and HTTP over TLS, with a certificate from a local CA
    made for it (KILN_HOME/tls; clients find the CA in stack.json)."""
    current = Stack.load(home)
    if current is not None and current.alive():
        return current
    if current is not None and set(current.pids) == set(PARTS):
        return restart_dead(current)
    if current is not None:
        down(home)  # an unfinished start: begin again
    return _fresh(home, tls)


def _fresh(home: Path, tls: bool) -> Stack:
    home.mkdir(parents=True, exist_ok=True)
    taken: set[int] = set()
    ports = [_new_port(taken) for _ in range(5)]
    scheme = "https" if tls else "http"
    stack = Stack(
        home=str(home),
        nats_url="",
        storage=f"127.0.0.1:{ports[0]}",
        storage_http=f"{scheme}://127.0.0.1:{ports[1]}",
        builder=f"127.0.0.1:{ports[2]}",
        publisher=f"127.0.0.1:{ports[3]}",
        publisher_http=f"{scheme}://127.0.0.1:{ports[4]}",
        tls_ca=str(make_local_tls(home / TLS_DIR).ca) if tls else "",
    )
    try:
        for part in PARTS:
            _start(stack, part)
    except BaseException:
        down(home)
        raise
    return stack


def _new_port(taken: set[int]) -> int:
    found = free_port(taken)
    taken.add(found)
    return found


def restart_dead(stack: Stack) -> Stack:
    """Starts again, on their old ports, the parts whose process is gone."""
    for part in PARTS:
        if not pid_alive(stack.pids[part]):
            try:
                _start(stack, part)
            except ServerError as exc:
                raise StackError(
                    f"could not restart the stack's {part}: {exc}\n"
                    "(`kiln down && kiln up` starts a new stack on new ports)"
                ) from exc
    return stack


def _start(stack: Stack, part: str) -> None:
    """Starts one part of the stack and records its pid once it is healthy."""
    home = Path(stack.home)
    logs = home / "logs"
    if part == "nats":
        old = port_of(stack.nats_url) if stack.nats_url else 0
        nats = start_nats(home / "nats", logs / "nats.log", port=old, users=nats_users(home))
        stack.nats_url, pid = nats.url, nats.pid
        issue_tokens(stack)
    elif part == "storage":
        pid = start_storage(stack, logs / "storage.log")
    elif part == "publisher":
        pid = start_publisher(stack, logs / "publisher.log")
    else:
        pid = start_builder(stack, stack.builder, logs / "builder.log")
    stack.pids[part] = pid
    stack.save()


def issue_tokens(stack: Stack) -> None:
    """The stack's two static tokens, kept in its NATS (which keeps them across
    restarts): an admin's for the CLI (KILN_HOME/token, so the README's
    commands need no set-up) and the service identity the builder and the
    publisher send each other and storage. Both files are the owner's only; a
    file whose token NATS no longer knows (its data lost) is made again."""
    home = Path(stack.home)
    wanted = {TOKEN_FILE: (LOCAL_TENANT, Role.ADMIN), SERVICE_TOKEN_FILE: ("kiln", Role.SERVICE)}
    kept = {name: (home / name).read_text().strip() for name in wanted if (home / name).is_file()}
    # In a thread of its own: `kiln up` may be called where a loop runs.
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        made = pool.submit(asyncio.run, _issue(stack.nats_url, wanted, kept)).result()
    for name, token in made.items():
        _keep_secret(home / name, token)


async def _issue(
    nats_url: str, wanted: dict[str, tuple[str, Role]], kept: dict[str, str]
) -> dict[str, str]:
    """The tokens to write: those not kept, or kept but unknown to NATS."""
    nc = await nats.connect(nats_url)
    try:
        tokens = StaticTokens(nc.jetstream())
        made = {}
        for name, (tenant, role) in wanted.items():
            if name in kept:
                try:
                    await tokens.authenticate(kept[name])
                    continue
                except Unauthenticated:
                    pass
            made[name] = (await tokens.issue(tenant, role, description="kiln up"))[0]
        return made
    finally:
        await nc.close()


def nats_users(home: Path) -> dict[str, str]:
    """The stack's NATS users and their passwords (kiln_common.nats_access:
    the admin's, which `kiln up` and its tests use, and one per service),
    made once and kept in KILN_HOME (the owner's only)."""
    path = home / NATS_USERS_FILE
    wanted = {ADMIN, *SERVICES}
    if path.is_file():
        kept: dict[str, str] = json.loads(path.read_text())
        if set(kept) == wanted:
            return kept
    users = {user: secrets.token_urlsafe(24) for user in sorted(wanted)}
    _keep_secret(path, json.dumps(users))
    return users


def nats_url_of(stack: Stack, user: str) -> str:
    """The stack's NATS, logged in as user (a service sends its own)."""
    return user_url(user, nats_users(Path(stack.home))[user], port_of(stack.nats_url))


def _keep_secret(path: Path, value: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(value + "\n")


def identity_env(stack: Stack, prefix: str) -> dict[str, str]:
    """A stack with tokens (every `kiln up`) requires identities, and its
    services send the service token; one assembled without (a test's own
    parts) runs with `auth: off`."""
    kept = Path(stack.home) / SERVICE_TOKEN_FILE
    if not kept.is_file():
        return {}
    return {f"{prefix}AUTH": "required", f"{prefix}TOKEN": kept.read_text().strip()}


def tls_env(stack: Stack, prefix: str) -> dict[str, str]:
    """A TLS stack's servers serve its local certificate and trust its CA."""
    if not stack.tls_ca:
        return {}
    where = Path(stack.home) / TLS_DIR
    return {
        f"{prefix}TLS_CERT_FILE": str(where / "server.pem"),
        f"{prefix}TLS_KEY_FILE": str(where / "server.key"),
        f"{prefix}TLS_CA_FILE": stack.tls_ca,
    }


def start_storage(stack: Stack, log: Path) -> int:
    """Starts the storage service (fs backend under KILN_HOME/storage) at the
    stack's addresses; returns its pid once it is healthy."""
    env = {
        "KILN_STORAGE_BACKEND": "fs",
        "KILN_STORAGE_FS_ROOT": str(Path(stack.home) / "storage"),
        "KILN_STORAGE_GRPC_BIND": stack.storage,
        "KILN_STORAGE_HTTP_PORT": str(port_of(stack.storage_http)),
        "KILN_STORAGE_NATS_URL": nats_url_of(stack, "storage"),
        "KILN_STORAGE_OUTBOX_DIR": str(Path(stack.home) / "outbox"),
        **identity_env(stack, "KILN_STORAGE_"),
        **tls_env(stack, "KILN_STORAGE_"),
    }
    return _healthy(["kiln_storage"], env, stack, stack.storage, log)


def _healthy(module: list[str], env: dict[str, str], stack: Stack, address: str, log: Path) -> int:
    """Starts `python -m <module...>` and returns its pid once its gRPC health
    check at address answers; stops it if it never does."""
    proc = spawn([sys.executable, "-m", *module], log_file=log, env=env)
    try:
        ca = Path(stack.tls_ca) if stack.tls_ca else None
        wait_grpc_health(address, proc.pid, log, READY_TIMEOUT, ca=ca)
    except BaseException:
        stop_pid(proc.pid)
        raise
    return proc.pid


def builder_env(stack: Stack) -> dict[str, str]:
    """The builder of a local stack: one worker, workspaces under KILN_HOME,
    the machine's layer cache (shared with `kiln-builder bake`)."""
    env = {
        "KILN_BUILDER_GRPC_BIND": stack.builder,
        "KILN_BUILDER_NATS_URL": nats_url_of(stack, "builder"),
        "KILN_BUILDER_STORAGE": stack.storage,
        "KILN_BUILDER_PUBLISHER": stack.publisher,
        "KILN_BUILDER_WORK_ROOT": str(Path(stack.home) / "work"),
        "KILN_BUILDER_OUTBOX_DIR": str(Path(stack.home) / "outbox"),
        "KILN_BUILDER_CACHE_DIR": str(default_cache_dir()),
        # One trusted user on one machine: no cluster to keep the sandbox from,
        # and local mirrors and test servers on loopback are fair game.
        "KILN_BUILDER_CLUSTER_NETWORKS": "[]",
        "KILN_BUILDER_EGRESS_ALLOW_LOOPBACK": "true",
        "KILN_BUILDER_EGRESS_ALLOW_PRIVATE": "true",
        **identity_env(stack, "KILN_BUILDER_"),
        **tls_env(stack, "KILN_BUILDER_"),
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
    return _healthy(["kiln_builder", "serve"], env, stack, address, log)


LOCAL_ENDORSER = "kiln@localhost.localdomain"


def publisher_env(stack: Stack) -> dict[str, str]:
    """The publisher of a local stack: the marketplace on, signed by a local
    endorser whose key is generated under KILN_HOME/publisher; Glance where a
    clouds.yaml names a cloud (found the way openstacksdk finds it)."""
    home = Path(stack.home) / "publisher"
    env = {
        "KILN_PUBLISHER_GRPC_BIND": stack.publisher,
        "KILN_PUBLISHER_HTTP_PORT": str(port_of(stack.publisher_http)),
        "KILN_PUBLISHER_STORAGE": stack.storage,
        "KILN_PUBLISHER_BUILDER": stack.builder,
        "KILN_PUBLISHER_NATS_URL": nats_url_of(stack, "publisher"),
        "KILN_PUBLISHER_ENDORSER_KEY_DIR": str(home / "endorsers"),
        "KILN_PUBLISHER_KEYRING_DIR": str(home / "keyring"),
        "KILN_PUBLISHER_LOCAL_ENDORSER": LOCAL_ENDORSER,
        "KILN_PUBLISHER_OUTBOX_DIR": str(Path(stack.home) / "outbox"),
        **identity_env(stack, "KILN_PUBLISHER_"),
        **tls_env(stack, "KILN_PUBLISHER_"),
    }
    env.update({k: v for k, v in os.environ.items() if k.startswith("KILN_PUBLISHER_")})
    if os.environ.get("OS_CLIENT_CONFIG_FILE"):  # openstacksdk's own variable
        env["OS_CLIENT_CONFIG_FILE"] = os.environ["OS_CLIENT_CONFIG_FILE"]
    return env


def start_publisher(stack: Stack, log: Path) -> int:
    """Starts the publisher at the stack's addresses; its pid once healthy."""
    return _healthy(["kiln_publisher"], publisher_env(stack), stack, stack.publisher, log)


def down(home: Path) -> bool:
    """Stops what `up` started, services first, NATS last. False if nothing ran."""
    stack = Stack.load(home)
    if stack is None:
        return False
    for name in reversed(list(stack.pids)):
        stop_pid(stack.pids[name])
    Stack.path(home).unlink(missing_ok=True)
    return True
