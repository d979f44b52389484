"""Clients of the Tokens API (the CLI's `kiln token` and `kiln whoami`):
every service answers it; these ask the builder. They return TokenRecords
(their digest left empty: the API never shows it) and Identities."""

from __future__ import annotations

from datetime import timedelta

from google.protobuf.duration_pb2 import Duration

from kiln_api.auth.v1 import auth_pb2 as pb
from kiln_api.auth.v1 import auth_pb2_grpc as pb_grpc
from kiln_client import _rpc, discovery
from kiln_client._sync import LoopThread
from kiln_common.auth import Identity, Role
from kiln_common.auth.static import TokenRecord


def record_of(msg: pb.Token) -> TokenRecord:
    expires = float(msg.expires_at.ToSeconds()) if msg.HasField("expires_at") else None
    revoked = float(msg.revoked_at.ToSeconds()) if msg.HasField("revoked_at") else None
    return TokenRecord(
        msg.id, msg.tenant, Role(msg.role), "", float(msg.created_at.ToSeconds()),
        expires, revoked, msg.description,
    )  # fmt: skip


class AsyncTokensClient:
    def __init__(self, address: str = "", *, token: str = "") -> None:
        self.address = discovery.address("storage", address)
        self.policy = _rpc.DEFAULT_POLICY
        self._channel = _rpc.channel(self.address, token)
        self._stub = pb_grpc.TokensStub(self._channel)

    async def close(self) -> None:
        await self._channel.close(None)

    async def create(
        self, tenant: str, role: str, expires_in: timedelta | None = None, description: str = ""
    ) -> tuple[str, TokenRecord]:
        """(the bearer, shown once; its record)."""
        request = pb.CreateTokenRequest(tenant=tenant, role=role, description=description)
        if expires_in is not None:
            request.expires_in.CopyFrom(Duration(seconds=int(expires_in.total_seconds())))
        reply = await _rpc.unary(self.policy, "create", lambda: self._stub.CreateToken(request))
        return reply.bearer, record_of(reply.token)

    async def list(self, tenant: str = "") -> list[TokenRecord]:
        request = pb.ListTokensRequest(tenant=tenant)
        reply = await _rpc.unary(self.policy, "list", lambda: self._stub.ListTokens(request))
        return [record_of(t) for t in reply.tokens]

    async def revoke(self, token_id: str) -> TokenRecord:
        request = pb.RevokeTokenRequest(id=token_id)
        return record_of(
            await _rpc.unary(self.policy, "revoke", lambda: self._stub.RevokeToken(request))
        )

    async def whoami(self) -> Identity:
        request = pb.WhoAmIRequest()
        reply = await _rpc.unary(self.policy, "whoami", lambda: self._stub.WhoAmI(request))
        return Identity(reply.subject, reply.tenant, Role(reply.role), reply.via)


class TokensClient:
    """The same, blocking."""

    def __init__(self, address: str = "", *, token: str = "") -> None:
        self.address = discovery.address("storage", address)
        self._loop = LoopThread("kiln-tokens-client")
        self._async = self._loop.run(self._make(token))

    async def _make(self, token: str) -> AsyncTokensClient:
        return AsyncTokensClient(self.address, token=token)

    def close(self) -> None:
        self._loop.close(self._async.close())

    def __enter__(self) -> TokensClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def create(
        self, tenant: str, role: str, expires_in: timedelta | None = None, description: str = ""
    ) -> tuple[str, TokenRecord]:
        return self._loop.run(self._async.create(tenant, role, expires_in, description))

    def list(self, tenant: str = "") -> list[TokenRecord]:
        return self._loop.run(self._async.list(tenant))

    def revoke(self, token_id: str) -> TokenRecord:
        return self._loop.run(self._async.revoke(token_id))

    def whoami(self) -> Identity:
        return self._loop.run(self._async.whoami())
