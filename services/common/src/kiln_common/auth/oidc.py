"""OIDC bearer tokens: a JWT the issuer signed, checked against its JWKS
(joserfc) for signature, issuer, audience, expiry and not-before (with a small
leeway for clocks), then read for the caller's tenant and role. The JWKS is
fetched once and again when a token names a key id it does not hold (the
issuer rotated its keys), at most once per REFETCH_SECONDS, so forged kids
cannot make Kiln hammer the issuer."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any

import aiohttp
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet

from kiln_common.auth.identity import Identity, Role
from kiln_common.auth.static import check_tenant
from kiln_common.errors import InvalidArgument, Unauthenticated, Unavailable

log = logging.getLogger(__name__)

ALGORITHMS = ("RS256", "ES256", "EdDSA")  # asymmetric only: never HS* or none
REFETCH_SECONDS = 30.0


@dataclass(frozen=True)
class OidcConfig:
    issuer: str
    audience: str
    jwks_url: str = ""  # empty: the issuer's discovery document names it
    tenant_claim: str = "kiln_tenant"
    role_claim: str = "kiln_role"
    leeway_seconds: int = 30
    refetch_seconds: float = REFETCH_SECONDS  # the least time between two fetches


class OidcVerifier:
    def __init__(self, config: OidcConfig) -> None:
        self.config = config
        self._keys: KeySet | None = None
        self._fetched = 0.0
        self._lock = asyncio.Lock()

    async def authenticate(self, token: str) -> Identity:
        try:
            header = jwt.decode(token, self._any_key, algorithms=ALGORITHMS)
        except _NeedKeys:  # a kid the cached set does not hold: fetch again, once
            await self._load(force=True)
            header = self._decode(token)
        except (JoseError, ValueError) as exc:
            raise Unauthenticated(f"bad token: {_why(exc)}") from None
        claims = header.claims
        registry = jwt.JWTClaimsRegistry(
            leeway=self.config.leeway_seconds,
            iss={"essential": True, "value": self.config.issuer},
            aud={"essential": True, "value": self.config.audience},
            exp={"essential": True},
            sub={"essential": True},
        )
        try:
            registry.validate(claims)
        except JoseError as exc:
            raise Unauthenticated(f"bad token: {_why(exc)}") from None
        return self._identity(claims)

    def _decode(self, token: str) -> jwt.Token:
        try:
            return jwt.decode(token, self._any_key, algorithms=ALGORITHMS)
        except (_NeedKeys, JoseError, ValueError) as exc:
            raise Unauthenticated(f"bad token: {_why(exc)}") from None

    def _identity(self, claims: dict[str, Any]) -> Identity:
        tenant = claims.get(self.config.tenant_claim)
        role = claims.get(self.config.role_claim)
        if not isinstance(tenant, str) or not tenant:
            raise Unauthenticated(f"the token names no tenant ({self.config.tenant_claim})")
        try:
            check_tenant(tenant)
        except InvalidArgument as exc:
            raise Unauthenticated(f"the token's {exc}") from None
        try:
            known = Role(str(role))
        except ValueError:
            raise Unauthenticated(
                f"the token names no Kiln role ({self.config.role_claim})"
            ) from None
        if known is Role.SERVICE:
            raise Unauthenticated("a service identity is never an OIDC token")
        return Identity(str(claims["sub"]), tenant, known, "oidc")

    def _any_key(self, guest: Any) -> KeySet:
        kid = guest.headers().get("kid")
        keys = self._keys
        if keys is None or (kid and not any(k.kid == kid for k in keys.keys)):
            raise _NeedKeys
        return keys

    async def prime(self) -> None:
        """Fetches the JWKS now (at start), so a first call does not wait."""
        await self._load(force=False)

    async def _load(self, force: bool) -> None:
        async with self._lock:
            if self._keys is not None and not force:
                return
            # At most one fetch a window, whether keys are held or none could be
            # had: unauthenticated callers must not drive requests to the issuer.
            if time.monotonic() - self._fetched < self.config.refetch_seconds:
                if self._keys is None:
                    raise Unavailable("the OIDC issuer's keys could not be fetched; try later")
                return
            self._fetched = time.monotonic()
            try:
                self._keys = KeySet.import_key_set(await self._fetch_jwks())
            except (JoseError, KeyError, TypeError, ValueError) as exc:
                raise Unavailable(f"the OIDC issuer's keys are not a JWKS: {_why(exc)}") from None
            log.info("OIDC keys of %s loaded: %d", self.config.issuer, len(self._keys.keys))

    async def _fetch_jwks(self) -> Any:
        timeout = aiohttp.ClientTimeout(total=10)
        try:
            async with aiohttp.ClientSession(timeout=timeout) as http:
                url = self.config.jwks_url or await self._discover(http)
                async with http.get(url) as reply:
                    reply.raise_for_status()
                    return await reply.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise Unavailable(f"the OIDC issuer's keys cannot be fetched: {exc}") from None

    async def _discover(self, http: aiohttp.ClientSession) -> str:
        well_known = self.config.issuer.rstrip("/") + "/.well-known/openid-configuration"
        async with http.get(well_known) as reply:
            reply.raise_for_status()
            found = await reply.json(content_type=None)
        if not isinstance(found, dict) or not isinstance(found.get("jwks_uri"), str):
            raise ValueError("the issuer's discovery document names no jwks_uri")
        return str(found["jwks_uri"])


class _NeedKeys(Exception):
    """The token's kid is not in the cached key set (or none is loaded)."""


def _why(exc: BaseException) -> str:
    return getattr(exc, "description", "") or type(exc).__name__
