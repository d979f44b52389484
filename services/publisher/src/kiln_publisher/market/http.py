"""The marketplace over HTTP: a JSON API and a server-rendered HTML catalogue
(no script needed). Read-only: publishing and deprecating go through the
publisher's gRPC API, which authenticates its callers."""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from kiln_common.errors import InvalidArgument, KilnError, NotFound, Unavailable
from kiln_publisher.market.catalogue import render_catalogue
from kiln_publisher.market.signing import SignedEntry
from kiln_publisher.market.store import Market, Query

log = logging.getLogger(__name__)

API = "/api/v1/entries"
_FILTERS = ("os", "os_version", "arch", "endorser", "status", "text", "identifier")
_STATUS = {InvalidArgument: 400, NotFound: 404, Unavailable: 503}
_MARKET: web.AppKey[Market] = web.AppKey("market", Market)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def describe(signed: SignedEntry, now: datetime) -> dict[str, Any]:
    """An entry as the API shows it: its signed fields, its status now, links."""
    entry = signed.entry
    base = f"{API}/{entry.identifier}"
    return {
        **entry.to_dict(),
        "status": entry.status(now),
        "links": {
            "self": base,
            "document": f"{base}/entry.json?endorser={entry.endorser.email}",
            "download": entry.locations[0] if entry.locations else None,
        },
    }


def _query(request: web.Request) -> Query:
    params = request.query
    unknown = set(params) - set(_FILTERS) - {"q", "version"}
    if unknown:
        raise InvalidArgument(
            f"unknown filter(s) {', '.join(sorted(unknown))}; use {', '.join(_FILTERS)}"
        )
    values = {name: params.get(name) or None for name in _FILTERS}
    values["text"] = values["text"] or params.get("q") or None
    values["os_version"] = values["os_version"] or params.get("version") or None
    return Query(**values)


@web.middleware
async def _errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Kiln errors as JSON with their HTTP status; never a traceback."""
    try:
        return await handler(request)
    except web.HTTPException:
        raise
    except KilnError as exc:
        status = next((code for kind, code in _STATUS.items() if isinstance(exc, kind)), 409)
        return web.json_response({"error": type(exc).__name__, "message": str(exc)}, status=status)
    except Exception:
        log.exception("marketplace request %s failed", request.path)
        return web.json_response({"error": "Internal", "message": "internal error"}, status=500)


async def _list(request: web.Request) -> web.Response:
    now = datetime.now(UTC)
    found = await request.app[_MARKET].search(_query(request), now)
    return web.json_response({"entries": [describe(s, now) for s in found]}, dumps=_dumps)


async def _show(request: web.Request) -> web.Response:
    signed = await request.app[_MARKET].get(
        request.match_info["identifier"], request.query.get("endorser") or None
    )
    return web.json_response(describe(signed, datetime.now(UTC)), dumps=_dumps)


async def _document(request: web.Request) -> web.Response:
    """The signed document, byte for byte as signed: `kiln market verify --file` input."""
    signed = await request.app[_MARKET].get(
        request.match_info["identifier"], request.query.get("endorser") or None
    )
    return web.Response(
        body=signed.document,
        content_type="application/json",
        headers={"Content-Disposition": f'attachment; filename="{signed.identifier}.json"'},
    )


async def _catalogue(request: web.Request) -> web.Response:
    now = datetime.now(UTC)
    query = _query(request)
    found = await request.app[_MARKET].search(query, now)
    page = render_catalogue(found, query, now)
    return web.Response(text=page, content_type="text/html", charset="utf-8")


def _dumps(value: Any) -> str:
    return json.dumps(value, indent=2)


def make_app(market: Market) -> web.Application:
    app = web.Application(middlewares=[_errors])
    app[_MARKET] = market
    app.router.add_get("/", _catalogue)
    app.router.add_get(API, _list)
    app.router.add_get(API + "/{identifier}", _show)
    app.router.add_get(API + "/{identifier}/entry.json", _document)
    return app
