"""The marketplace over HTTP: a JSON API and a server-rendered HTML catalogue
(no script needed). Read-only: publishing and deprecating go through the
publisher's gRPC API, which does not authenticate its callers (it listens
without TLS or credentials): whoever reaches that port can publish and deprecate, so it
belongs on a trusted network. The endorsers' signatures are what readers
trust, and only the publisher holds their private keys."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from kiln_common.auth.http import Middleware
from kiln_common.errors import InvalidArgument, KilnError, NotFound, Unavailable
from kiln_market.entry import Entry
from kiln_market.signing import SignedEntry
from kiln_publisher.market import page
from kiln_publisher.market.catalogue import render_catalogue
from kiln_publisher.market.entry_page import EntryView, render_entry
from kiln_publisher.market.links import API, is_download_link, links
from kiln_publisher.market.query import Query
from kiln_publisher.market.sbom import NO_SBOM, StoredSboms
from kiln_publisher.market.store import Market

log = logging.getLogger(__name__)

_FILTERS = ("os", "os_version", "arch", "endorser", "status", "text", "identifier")
_STATUS = {InvalidArgument: 400, NotFound: 404, Unavailable: 503}
# Turns an entry into a download URL that works now: the storage service's
# URLs expire (at most a week), entries live for months.
Locate = Callable[[Entry], Awaitable[str]]

_MARKET: web.AppKey[Market] = web.AppKey("market", Market)
_LOCATE: web.AppKey[Locate | None] = web.AppKey("locate")
_SBOM: web.AppKey[StoredSboms | None] = web.AppKey("sbom")
_PUBLIC_URL: web.AppKey[str] = web.AppKey("public_url", str)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def describe(signed: SignedEntry, now: datetime, redirect: bool = False) -> dict[str, Any]:
    """An entry as the API shows it: its signed fields, its status now, links."""
    entry = signed.entry
    return {**entry.to_dict(), "status": entry.status(now), "links": links(entry, redirect)}


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


def _status(exc: KilnError) -> int:
    return next((code for kind, code in _STATUS.items() if isinstance(exc, kind)), 409)


@web.middleware
async def _errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Kiln errors as JSON with their HTTP status; never a traceback."""
    try:
        return await handler(request)
    except web.HTTPException:
        raise
    except KilnError as exc:
        body = {"error": type(exc).__name__, "message": str(exc)}
        return web.json_response(body, status=_status(exc))
    except Exception:
        log.exception("marketplace request %s failed", request.path)
        return web.json_response({"error": "Internal", "message": "internal error"}, status=500)


async def _list(request: web.Request) -> web.Response:
    now = datetime.now(UTC)
    found = await request.app[_MARKET].search(_query(request), now)
    redirect = request.app[_LOCATE] is not None
    listed = [describe(s, now, redirect) for s in found]
    return web.json_response({"entries": listed}, dumps=_dumps)


async def _entry(request: web.Request) -> SignedEntry:
    return await request.app[_MARKET].get(
        request.match_info["identifier"], request.query.get("endorser") or None
    )


async def _show(request: web.Request) -> web.Response:
    redirect = request.app[_LOCATE] is not None
    return web.json_response(
        describe(await _entry(request), datetime.now(UTC), redirect), dumps=_dumps
    )


async def _download(request: web.Request) -> web.Response:
    """A redirect to a download URL signed now (Range requests then go there);
    410 Gone for an entry that is deprecated or expired: its endorser no
    longer vouches for the image."""
    signed = await _entry(request)
    status = signed.entry.status(datetime.now(UTC))
    if status != "valid":
        message = f"entry {signed.identifier} is {status}: it is not downloaded any more"
        body = json.dumps({"error": "Gone", "message": message})
        raise web.HTTPGone(text=body, content_type="application/json")
    locate = request.app[_LOCATE]
    if locate is not None:
        url = await locate(signed.entry)
    elif others := [u for u in signed.entry.locations if not is_download_link(u)]:
        url = others[0]  # not its own stable link: that is this very redirect
    else:
        raise NotFound(f"entry {signed.identifier} has no download location")
    raise web.HTTPTemporaryRedirect(url)


async def _document(request: web.Request) -> web.Response:
    """The signed document, byte for byte as signed: `kiln market verify --file` input."""
    signed = await _entry(request)
    return web.Response(
        body=signed.document,
        content_type="application/json",
        headers={"Content-Disposition": f'attachment; filename="{signed.identifier}.json"'},
    )


def _html(text: str, status: int = 200) -> web.Response:
    return web.Response(text=text, status=status, content_type="text/html", charset="utf-8")


def _html_errors(handler: Handler) -> Handler:
    """A page's errors as a page (a reader followed a link), not JSON: every
    Kiln error with its status (NATS away is a 503 page), anything else a 500
    page that says no more than that."""

    async def wrapped(request: web.Request) -> web.StreamResponse:
        try:
            return await handler(request)
        except web.HTTPException:
            raise
        except KilnError as exc:
            return _html(page.error(str(exc)), _status(exc))
        except Exception:
            log.exception("marketplace page %s failed", request.path)
            return _html(page.error("internal error"), 500)

    return wrapped


@_html_errors
async def _catalogue(request: web.Request) -> web.Response:
    now = datetime.now(UTC)
    query = _query(request)
    found = await request.app[_MARKET].search(query, now)
    return _html(render_catalogue(found, query, now, redirect=request.app[_LOCATE] is not None))


async def _sbom_of(request: web.Request, entry: Entry) -> bytes | None:
    """The entry's signed SBOM; None when there is none, or it cannot be read now."""
    sbom = request.app[_SBOM]
    if sbom is None:
        return None
    try:
        return await sbom(entry)
    except KilnError as exc:
        log.warning("the SBOM of entry %s is not served: %s", entry.identifier, exc)
        return None


@_html_errors
async def _entry_page(request: web.Request) -> web.Response:
    signed = await _entry(request)
    market, sbom = request.app[_MARKET], request.app[_SBOM]
    history = await market.history(signed)
    view = EntryView(
        signed,
        history,
        await sbom.listing(signed.entry) if sbom is not None else NO_SBOM,
        origin=request.app[_PUBLIC_URL] or str(request.url.origin()),
        redirect=request.app[_LOCATE] is not None,
    )
    # Thousands of escaped rows: built off the event loop the gRPC server shares.
    return _html(await asyncio.to_thread(render_entry, view, datetime.now(UTC)))


async def _sbom(request: web.Request) -> web.Response:
    """The SPDX document whose SHA-256 the entry signs, as a download: it is
    a stranger's JSON, never rendered here."""
    signed = await _entry(request)
    document = await _sbom_of(request, signed.entry)
    if document is None:
        raise NotFound(f"entry {signed.identifier} has no SBOM stored")
    return web.Response(
        body=document,
        content_type="application/json",
        headers={"Content-Disposition": f'attachment; filename="{signed.identifier}.spdx.json"'},
    )


# The pages are server-rendered HTML with their own hashed style and a GET
# form: nothing else may load, run or frame them.
_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": page.CSP,
    "Referrer-Policy": "no-referrer",
}


async def _secure_headers(request: web.Request, response: web.StreamResponse) -> None:
    response.headers.update(_HEADERS)


def _dumps(value: Any) -> str:
    return json.dumps(value, indent=2)


# The catalogue is public: its reads and /download (which refuses deprecated
# and expired entries), as the issue of identities says.
PUBLIC_ROUTES = frozenset({
    "/", page.ENTRY_PAGE + "/{identifier}", API, API + "/{identifier}",
    API + "/{identifier}/entry.json", API + "/{identifier}/sbom.spdx.json",
    API + "/{identifier}/download",
})  # fmt: skip


def make_app(
    market: Market,
    locate: Locate | None = None,
    guard: Middleware | None = None,
    sbom: StoredSboms | None = None,
    public_url: str = "",
) -> web.Application:
    """The marketplace's HTTP app. Without locate, download links are the
    entries' first locations as signed; with it (the publisher passes one
    that asks the storage service for a fresh URL of entry.artifact_id),
    they go through GET .../{identifier}/download, a 307 to a URL that
    works now. With sbom (the publisher passes StoredSboms), an entry's
    page lists its SBOM's packages and links the document. public_url
    (KILN_PUBLISHER_PUBLIC_URL) is the origin the pages' command lines
    name; without it, the one the request came to (its Host header)."""
    app = web.Application(middlewares=[*([guard] if guard else []), _errors])
    app.on_response_prepare.append(_secure_headers)
    app[_MARKET] = market
    app[_LOCATE] = locate
    app[_SBOM] = sbom
    app[_PUBLIC_URL] = public_url.rstrip("/")
    app.router.add_get("/", _catalogue)
    app.router.add_get(page.ENTRY_PAGE + "/{identifier}", _entry_page)
    app.router.add_get(API, _list)
    app.router.add_get(API + "/{identifier}", _show)
    app.router.add_get(API + "/{identifier}/entry.json", _document)
    app.router.add_get(API + "/{identifier}/download", _download)
    app.router.add_get(API + "/{identifier}/sbom.spdx.json", _sbom)
    return app
