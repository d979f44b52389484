"""The one aiohttp middleware every Kiln HTTP server installs: a route is
public only if its app says so (the marketplace's reads, signed download
URLs, health); any other needs a bearer token whose role may read, checked as
the gRPC interceptor checks it (kiln_common.auth.authenticator), and runs
with caller() set. Fail closed: a route added later without a word is not
public. A route that does not exist stays a 404 for everyone."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable

from aiohttp import web
from aiohttp.typedefs import Middleware

from kiln_common.auth.authenticator import Authenticator
from kiln_common.auth.identity import Verb, acting_as, allowed
from kiln_common.errors import KilnError, Unauthenticated

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
__all__ = ["Middleware", "http_guard"]


def http_guard(authenticator: Authenticator | None, public: Iterable[str]) -> Middleware:
    """The middleware; public: the route patterns (resource.canonical) anyone may call."""
    open_routes = frozenset(public)

    @web.middleware
    async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
        resource = request.match_info.route.resource
        if authenticator is None or resource is None or resource.canonical in open_routes:
            return await handler(request)
        try:
            identity = await authenticator.authenticate(request.headers.get("Authorization", ""))
        except Unauthenticated as exc:
            raise web.HTTPUnauthorized(
                text=str(exc), headers={"WWW-Authenticate": "Bearer"}
            ) from None
        except KilnError as exc:  # the OIDC issuer's keys cannot be had
            raise web.HTTPServiceUnavailable(text=str(exc)) from None
        if not allowed(identity, Verb.READ):
            raise web.HTTPForbidden(text=f"the {identity.role} role may not read")
        with acting_as(identity):
            return await handler(request)

    return guard
