"""One mapping from domain errors to status codes; nothing unexpected leaks."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from kiln_api.storage.v1 import storage_pb2 as pb
from kiln_api.storage.v1 import storage_pb2_grpc as pb_grpc
from kiln_common import errors
from kiln_common.grpc_errors import servicer, status_for
from kiln_common.grpc_server import GrpcServer


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (errors.InvalidArgument("x"), grpc.StatusCode.INVALID_ARGUMENT),
        (errors.NotFound("x"), grpc.StatusCode.NOT_FOUND),
        (errors.FailedPrecondition("x"), grpc.StatusCode.FAILED_PRECONDITION),
        (errors.Unavailable("x"), grpc.StatusCode.UNAVAILABLE),
        (errors.KilnError("x"), grpc.StatusCode.INTERNAL),
    ],
)
def test_status_for_each_domain_error(error: errors.KilnError, code: grpc.StatusCode) -> None:
    assert status_for(error) == code


@servicer
class Failing(pb_grpc.StorageServicer):
    """A unary and a server-streaming RPC that raise on purpose."""

    async def StatArtifact(self, request: Any, context: Any) -> Any:
        if request.id == "missing":
            raise errors.NotFound("no such thing")
        raise RuntimeError("/secret/path/in/message")

    async def Download(self, request: Any, context: Any) -> AsyncIterator[Any]:
        yield pb.DownloadChunk(data=b"first")
        raise errors.Unavailable("backend gone")


async def test_servicer_errors_become_status_codes_without_leaking() -> None:
    def register(server: grpc.aio.Server) -> None:
        pb_grpc.add_StorageServicer_to_server(Failing(), server)

    server = GrpcServer("127.0.0.1:0", [], register)
    port = await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = pb_grpc.StorageStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.StatArtifact(pb.StatArtifactRequest(id="missing"))
            assert caught.value.code() == grpc.StatusCode.NOT_FOUND
            assert caught.value.details() == "no such thing"
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.StatArtifact(pb.StatArtifactRequest(id="boom"))
            assert caught.value.code() == grpc.StatusCode.INTERNAL
            assert "secret" not in (caught.value.details() or "")
            assert "internal error (ref " in (caught.value.details() or "")
            call = stub.Download(pb.DownloadRequest(id="x"))
            first = await call.read()
            assert first.data == b"first"
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await call.read()
            assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
            health = health_pb2_grpc.HealthStub(channel)
            reply = await health.Check(health_pb2.HealthCheckRequest())
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
    finally:
        await server.stop(0)
