"""`python3 -m kiln_common.health_probe (HOST:PORT | --service NAME)`: a
container's HEALTHCHECK. Asks the service's plain gRPC health endpoint
(grpc.health.v1, the same one the kubelet's probes use) and exits 0 when it
answers SERVING, 1 otherwise (not serving, not answering within the timeout,
not there). With --service it finds the address as the service was told to
serve: KILN_<NAME>_HEALTH_BIND, else its gRPC bind (which serves health too),
so a container run with other binds is still probed where it listens."""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

TIMEOUT_SECONDS = 3.0
DEFAULT_PORTS = {"storage": 50051, "builder": 50052, "publisher": 50053}  # their grpc_bind


def serving(address: str, timeout: float = TIMEOUT_SECONDS) -> bool:
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            reply = stub.Check(health_pb2.HealthCheckRequest(), timeout=timeout)
        except grpc.RpcError:
            return False
    return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


def service_address(service: str, env: Mapping[str, str]) -> str:
    """Where the service's health answers, on this host, from its settings' env."""
    prefix = f"KILN_{service.upper()}_"
    if not env.get(prefix + "HEALTH_BIND") and env.get(prefix + "TLS_CERT_FILE"):
        # Its gRPC port speaks TLS only; the plain health port is what a probe asks.
        raise ValueError(f"{prefix}HEALTH_BIND is empty and the API serves TLS: set it")
    bind = env.get(prefix + "HEALTH_BIND") or env.get(prefix + "GRPC_BIND") or ""
    if not bind:
        bind = f"127.0.0.1:{DEFAULT_PORTS.get(service, 0)}"
    host, _, port = bind.rpartition(":")
    # A wildcard bind is reached on loopback from inside the container.
    host = "127.0.0.1" if host in ("", "0.0.0.0", "[::]", "::") else host
    return f"{host}:{port}"


def main(argv: list[str]) -> int:
    if len(argv) == 2 and argv[0] == "--service":
        try:
            address = service_address(argv[1], os.environ)
        except ValueError as exc:
            print(f"unhealthy: {exc}")
            return 1
    elif len(argv) == 1:
        address = argv[0]
    else:
        print("usage: python3 -m kiln_common.health_probe (HOST:PORT | --service NAME)",
              file=sys.stderr)  # fmt: skip
        return 2
    ok = serving(address)
    print("SERVING" if ok else f"{address}: not serving")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
