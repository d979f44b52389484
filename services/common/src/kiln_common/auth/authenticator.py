"""A bearer token to an Identity: a static Kiln token (kiln_...) is looked up
in the token bucket, anything else is an OIDC JWT (when an issuer is set)."""

from __future__ import annotations

from kiln_common.auth.identity import Identity
from kiln_common.auth.oidc import OidcVerifier
from kiln_common.auth.static import PREFIX, StaticTokens
from kiln_common.errors import Unauthenticated


class Authenticator:
    def __init__(self, static: StaticTokens | None, oidc: OidcVerifier | None = None) -> None:
        self.static = static
        self.oidc = oidc

    async def authenticate(self, authorization: str) -> Identity:
        """From an `authorization: Bearer <token>` value."""
        scheme, _, token = authorization.strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise Unauthenticated("no bearer token: set KILN_TOKEN (or log in)")
        if token.startswith(PREFIX):
            if self.static is None:
                raise Unauthenticated("this service takes no static tokens")
            return await self.static.authenticate(token)
        if self.oidc is None:
            raise Unauthenticated("not a Kiln token, and no OIDC issuer is configured")
        return await self.oidc.authenticate(token)
