"""The download HTTP server of the filesystem backend: signed expiring URLs,
GET and HEAD, Range (206), ETag, Content-Length and Accept-Ranges, all from
aiohttp's FileResponse (sendfile)."""

from __future__ import annotations

import logging

from aiohttp import web

from kiln_common.auth.http import Middleware
from kiln_common.errors import InvalidArgument, NotFound
from kiln_common.ids import ID_RE
from kiln_storage.backends.fs import FilesystemStore
from kiln_storage.core import StorageCore, download_name
from kiln_storage.urls import HmacSigner

log = logging.getLogger(__name__)


# Every route is public: a download is allowed by its URL's signature (and
# its tenant was checked when the URL was signed), health by nature.
PUBLIC_ROUTES = frozenset({"/artifacts/{id}/{name}", "/healthz"})


def make_app(
    core: StorageCore, store: FilesystemStore, signer: HmacSigner,
    guard: Middleware | None = None,
) -> web.Application:  # fmt: skip
    async def artifact(request: web.Request) -> web.StreamResponse:
        artifact_id = request.match_info["id"]
        if not ID_RE.match(artifact_id):
            raise web.HTTPNotFound()
        why = signer.verify(
            artifact_id,
            request.query.get("expires", ""),
            request.query.get("signature", ""),
            request.query.get("kid", ""),
        )
        if why:
            log.info("refused download of %s: %s", artifact_id, why)
            raise web.HTTPForbidden(text=f"download URL refused: {why}\n")
        try:
            found = await core.stat(artifact_id)
            path = store.local_path(found.blob)
        except (NotFound, InvalidArgument):
            raise web.HTTPNotFound() from None
        return web.FileResponse(
            path,
            headers={
                "Content-Type": "application/octet-stream",
                "Content-Disposition": f'attachment; filename="{download_name(found)}"',
                "X-Checksum-Sha256": found.checksums.sha256,
                "Cache-Control": "private, max-age=0",
            },
        )

    async def healthz(_: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    app = web.Application(middlewares=[guard] if guard else [])
    app.router.add_route("GET", "/artifacts/{id}/{name}", artifact)
    app.router.add_route("HEAD", "/artifacts/{id}/{name}", artifact)
    app.router.add_get("/healthz", healthz)
    return app
