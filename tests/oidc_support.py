"""A real OIDC issuer on the loopback, for the identity tests: an aiohttp
server with a discovery document and a JWKS, whose keys can be rotated, and
which signs JWTs with any claims (and any key, to forge one)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from joserfc import jwt
from joserfc.jwk import ECKey, KeySet

AUDIENCE = "kiln"


def new_key(kid: str) -> ECKey:
    return ECKey.generate_key("P-256", parameters={"kid": kid})


@dataclass
class Issuer:
    url: str = ""
    keys: list[ECKey] = field(default_factory=lambda: [new_key("k1")])
    fetches: int = 0  # how often the JWKS was fetched
    broken: bool = False  # serve something that is not a JWKS

    def rotate(self, kid: str) -> ECKey:
        """A new signing key; the old ones are no longer published."""
        self.keys = [new_key(kid)]
        return self.keys[0]

    def token(self, key: ECKey | None = None, alg: str = "ES256", **claims: Any) -> str:
        now = int(time.time())
        body = {
            "iss": self.url, "aud": AUDIENCE, "sub": "alice", "iat": now, "exp": now + 300,
            "kiln_tenant": "team-a", "kiln_role": "builder",
        }  # fmt: skip
        body.update(claims)
        body = {k: v for k, v in body.items() if v is not None}
        signer = key or self.keys[0]
        header = {"alg": alg, "kid": signer.kid}
        return jwt.encode(header, body, signer, algorithms=[alg])


@asynccontextmanager
async def oidc_issuer() -> AsyncIterator[Issuer]:
    issuer = Issuer()

    async def discovery(_: web.Request) -> web.Response:
        return web.json_response({"issuer": issuer.url, "jwks_uri": issuer.url + "/jwks"})

    async def jwks(_: web.Request) -> web.Response:
        issuer.fetches += 1
        if issuer.broken:
            return web.json_response({"keys": "none here"})
        public = KeySet(issuer.keys).as_dict(private=False)
        return web.json_response(public)

    app = web.Application()
    app.router.add_get("/.well-known/openid-configuration", discovery)
    app.router.add_get("/jwks", jwks)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    issuer.url = f"http://127.0.0.1:{port}"
    try:
        yield issuer
    finally:
        await runner.cleanup()
