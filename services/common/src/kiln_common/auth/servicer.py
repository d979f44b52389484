"""The Tokens API (kiln.auth.v1): static tokens for an admin, and the
caller's own identity. Converts messages and calls StaticTokens, nothing more;
the interceptor has already checked the caller's role."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import grpc

from kiln_api.auth.v1 import auth_pb2 as pb
from kiln_api.auth.v1 import auth_pb2_grpc as pb_grpc
from kiln_common.auth.identity import Role, caller
from kiln_common.auth.static import StaticTokens, TokenRecord, check_tenant
from kiln_common.errors import FailedPrecondition, InvalidArgument, Unauthenticated
from kiln_common.grpc_errors import servicer

Context = grpc.aio.ServicerContext[Any, Any]
MAX_DESCRIPTION = 200


def token_message(record: TokenRecord) -> pb.Token:
    msg = pb.Token(id=record.id, tenant=record.tenant, role=record.role.value)
    msg.description = record.description
    msg.created_at.FromDatetime(datetime.fromtimestamp(record.created_at, UTC))
    if record.expires_at is not None:
        msg.expires_at.FromDatetime(datetime.fromtimestamp(record.expires_at, UTC))
    if record.revoked_at is not None:
        msg.revoked_at.FromDatetime(datetime.fromtimestamp(record.revoked_at, UTC))
    return msg


@servicer
class TokensServicer(pb_grpc.TokensServicer):
    def __init__(self, tokens: StaticTokens | None, writes: bool) -> None:
        self._tokens = tokens
        self._writes = writes  # only storage's NATS user may write the bucket

    def _store(self) -> StaticTokens:
        if self._tokens is None:
            raise FailedPrecondition("this service keeps no static tokens (it has no NATS)")
        return self._tokens

    def _writer(self) -> StaticTokens:
        if not self._writes:
            raise FailedPrecondition(
                "tokens are made and revoked through the storage service (`kiln token` does)"
            )
        return self._store()

    async def CreateToken(
        self, request: pb.CreateTokenRequest, context: Context
    ) -> pb.CreateTokenResponse:
        try:
            role = Role(request.role)
        except ValueError:
            role = Role.SERVICE  # refused below, with the roles it may be
        if role is Role.SERVICE:  # Kiln's own services' identity: made by the stack only
            roles = ", ".join(r.value for r in Role if r is not Role.SERVICE)
            raise InvalidArgument(f"role: one of {roles}, not {request.role[:32]!r}")
        expires = request.expires_in.ToTimedelta() if request.HasField("expires_in") else None
        if expires is not None and expires.total_seconds() <= 0:
            raise InvalidArgument("expires_in: a positive duration (or unset: never)")
        if len(request.description) > MAX_DESCRIPTION:
            raise InvalidArgument(f"description: at most {MAX_DESCRIPTION} characters")
        bearer, record = await self._writer().issue(
            check_tenant(request.tenant), role, expires, request.description
        )
        return pb.CreateTokenResponse(token=token_message(record), bearer=bearer)

    async def ListTokens(
        self, request: pb.ListTokensRequest, context: Context
    ) -> pb.ListTokensResponse:
        found = await self._store().records()
        wanted = [r for r in found if not request.tenant or r.tenant == request.tenant]
        return pb.ListTokensResponse(tokens=[token_message(r) for r in wanted])

    async def RevokeToken(self, request: pb.RevokeTokenRequest, context: Context) -> pb.Token:
        return token_message(await self._writer().revoke(request.id))

    async def WhoAmI(self, request: pb.WhoAmIRequest, context: Context) -> pb.Identity:
        who = caller()
        if who is None:
            raise Unauthenticated("this service takes no identities (auth: off)")
        return pb.Identity(subject=who.subject, tenant=who.tenant, role=who.role, via=who.via)


def add_tokens(server: grpc.aio.Server, tokens: StaticTokens | None, writes: bool) -> None:
    pb_grpc.add_TokensServicer_to_server(TokensServicer(tokens, writes), server)
