"""TLS: a storage service serving gRPC and HTTP with a certificate from a
local CA (kiln_devstack.local_ca, made with the cryptography library).
Clients that trust that CA talk to it; a client that trusts another CA, or
none, is refused in the handshake and nothing is done."""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest

from kiln_api.storage.v1 import storage_pb2 as pb
from kiln_api.storage.v1 import storage_pb2_grpc as pb_grpc
from kiln_client import AsyncStorageClient
from kiln_common.grpc_server import CHANNEL_OPTIONS
from kiln_common.tls import client_context
from kiln_devstack.local_ca import make_local_tls

pytestmark = pytest.mark.integration


async def listed(address: str, credentials: grpc.ChannelCredentials | None) -> grpc.StatusCode:
    """ListArtifacts over a channel with credentials (None: plain)."""
    if credentials is None:
        channel = grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS)
    else:
        channel = grpc.aio.secure_channel(address, credentials, options=CHANNEL_OPTIONS)
    async with channel:
        try:
            await pb_grpc.StorageStub(channel).ListArtifacts(pb.ListArtifactsRequest(), timeout=5)
        except grpc.aio.AioRpcError as exc:
            return exc.code()
    return grpc.StatusCode.OK


async def fetched(url: str, context: ssl.SSLContext | bool) -> str:
    async with aiohttp.ClientSession() as session:
        try:
            async with session.get(url, ssl=context) as response:
                return str(response.status)
        except aiohttp.ClientError as exc:
            return type(exc).__name__


async def test_clients_verify_the_server_and_refuse_a_certificate_of_another_ca(
    storage_service: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ours = make_local_tls(tmp_path / "ours")
    theirs = make_local_tls(tmp_path / "theirs", name="another CA")
    async with storage_service(tls_cert_file=ours.cert, tls_key_file=ours.key) as (app, address):
        trusting = grpc.ssl_channel_credentials(ours.ca.read_bytes())
        other = grpc.ssl_channel_credentials(theirs.ca.read_bytes())
        grpc_codes = {
            "our CA": await listed(address, trusting),
            "another CA": await listed(address, other),
            "plain": await listed(address, None),
        }
        health = f"https://127.0.0.1:{app.http_port}/healthz"
        http = {
            "our CA": await fetched(health, client_context(ours.ca)),
            "another CA": await fetched(health, client_context(theirs.ca)),
            "plain": await fetched(health.replace("https:", "http:"), False),
        }
        # Kiln's client trusts the CA it is told of (KILN_CA_FILE here).
        monkeypatch.setenv("KILN_CA_FILE", str(ours.ca))
        async with AsyncStorageClient(address) as client:
            assert [a async for a in client.list()] == []
    assert grpc_codes == {
        "our CA": grpc.StatusCode.OK,
        "another CA": grpc.StatusCode.UNAVAILABLE,
        "plain": grpc.StatusCode.UNAVAILABLE,
    }
    assert http["our CA"] == "200"
    assert http["another CA"] == "ClientConnectorCertificateError"
    assert http["plain"] != "200"


async def test_a_plain_health_port_answers_health_only_while_the_api_stays_behind_tls(
    storage_service: Any, tmp_path: Path
) -> None:
    """For the kubelet's gRPC probes, which speak no TLS."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from kiln_devstack.devservers import free_port

    ours = make_local_tls(tmp_path / "ours")
    health = f"127.0.0.1:{free_port()}"
    settings = {"tls_cert_file": ours.cert, "tls_key_file": ours.key, "health_bind": health}
    async with storage_service(**settings) as (_, address):
        async with grpc.aio.insecure_channel(health) as channel:
            reply = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service="kiln.storage.v1.Storage"), timeout=5
            )
        plain_api = await listed(health, None)
        plain_tls_port = await listed(address, None)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING
    assert plain_api == grpc.StatusCode.UNIMPLEMENTED  # the health port serves nothing else
    assert plain_tls_port == grpc.StatusCode.UNAVAILABLE
