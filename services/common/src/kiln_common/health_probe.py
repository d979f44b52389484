"""`python3 -m kiln_common.health_probe HOST:PORT`: a container's HEALTHCHECK.
Asks the service's plain gRPC health endpoint (grpc.health.v1, the same one
the kubelet's probes use) and exits 0 when it answers SERVING, 1 otherwise
(not serving, not answering within the timeout, not there)."""

from __future__ import annotations

import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

TIMEOUT_SECONDS = 3.0


def serving(address: str, timeout: float = TIMEOUT_SECONDS) -> bool:
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            reply = stub.Check(health_pb2.HealthCheckRequest(), timeout=timeout)
        except grpc.RpcError:
            return False
    return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python3 -m kiln_common.health_probe HOST:PORT", file=sys.stderr)
        return 2
    ok = serving(argv[0])
    print("SERVING" if ok else f"{argv[0]}: not serving")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
