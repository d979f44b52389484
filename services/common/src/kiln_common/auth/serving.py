"""A service's identities, from its settings: the interceptor its gRPC server
installs and the Tokens API it serves (both only when `auth: required`)."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field

import grpc
from nats.js import JetStreamContext

from kiln_common.auth.authenticator import Authenticator
from kiln_common.auth.http import Middleware, http_guard
from kiln_common.auth.interceptor import AuthInterceptor
from kiln_common.auth.oidc import OidcConfig, OidcVerifier
from kiln_common.auth.servicer import add_tokens
from kiln_common.auth.static import StaticTokens
from kiln_common.errors import KilnError
from kiln_common.settings import IdentitySettings

log = logging.getLogger(__name__)
SERVICE_NAME = "kiln.auth.v1.Tokens"


@dataclass
class Guard:
    authenticator: Authenticator | None = None
    interceptors: list[AuthInterceptor] = field(default_factory=list)

    def register(self, server: grpc.aio.Server, *, token_writer: bool = False) -> None:
        """The Tokens API; token_writer: this service makes and revokes tokens
        (storage: its NATS user alone may write the bucket)."""
        if self.authenticator is not None:
            add_tokens(server, self.authenticator.static, token_writer)

    def http(self, public: Iterable[str]) -> Middleware:
        """The aiohttp middleware of this service's HTTP server (kiln_common.auth.http)."""
        return http_guard(self.authenticator, public)

    async def prime(self) -> None:
        """The OIDC issuer's keys, fetched at start if it answers (else on first use)."""
        oidc = self.authenticator.oidc if self.authenticator else None
        if oidc is not None:
            try:
                await oidc.prime()
            except KilnError as exc:
                log.warning("OIDC keys not fetched yet: %s", exc)


def guard(settings: IdentitySettings, js: JetStreamContext | None) -> Guard:
    if settings.auth == "off":
        log.warning("auth: off: every caller may do everything (a trusted network only)")
        return Guard()
    oidc = None
    if settings.oidc_issuer:
        config = OidcConfig(
            settings.oidc_issuer, settings.oidc_audience, settings.oidc_jwks_url,
            settings.oidc_tenant_claim, settings.oidc_role_claim,
            refetch_seconds=settings.oidc_refetch_seconds,
        )  # fmt: skip
        oidc = OidcVerifier(config)
    authenticator = Authenticator(StaticTokens(js) if js is not None else None, oidc)
    return Guard(authenticator, [AuthInterceptor(authenticator)])
