"""The storage core: artifacts, uploads, deduplication and checksums.

Transport-free: the gRPC servicer and the HTTP server both call it. Where
things are in the backend: kiln_storage.keys; the bytes' plumbing (digests
fed part by part, regrouping, read-ahead): kiln_storage.streams.

An upload until its bytes are verified, and the janitor of abandoned ones, is
kiln_storage.uploads; the core commits it as an artifact, and lists, reads
and deletes artifacts. Identical bytes are stored once (kiln_storage.sharing).
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from kiln_common.auth.identity import scope, visible
from kiln_common.auth.quotas import Quotas, check
from kiln_common.errors import FailedPrecondition, InvalidArgument, NotFound
from kiln_common.events import Publisher
from kiln_common.ids import check_id, new_id
from kiln_storage import keys
from kiln_storage.backends import ObjectStore
from kiln_storage.index import ArtifactIndex
from kiln_storage.model import TENANT_LABEL, Artifact, Checksums, UploadSession, validate_labels
from kiln_storage.sharing import BlobSharing
from kiln_storage.streams import empty, read_ahead
from kiln_storage.uploads import Uploads

log = logging.getLogger(__name__)

MAX_PAGE = 1000
DEFAULT_PAGE = 100


@dataclass(frozen=True)
class CoreConfig:
    part_size: int = 16 * 1024 * 1024
    upload_concurrency: int = 4
    upload_ttl: timedelta = timedelta(hours=24)
    url_ttl: timedelta = timedelta(hours=1)
    max_url_ttl: timedelta = timedelta(days=7)
    # How long a delete waits for an upload of the same bytes that is
    # committing (its ref written, its record not yet) to say which blob it took.
    commit_wait: timedelta = timedelta(seconds=5)


# Called at named points of a commit and a delete; tests pause there to force
# an interleaving of two requests. None in production.
Checkpoint = Callable[[str], Awaitable[None]]


class UrlSigner(Protocol):
    def url(self, artifact_id: str, filename: str, expires: timedelta) -> str: ...


def download_name(artifact: Artifact) -> str:
    """A safe file name for Content-Disposition: name-version.format, or the id."""
    parts = [artifact.labels.get(k, "") for k in ("name", "version")]
    stem = "-".join(p for p in parts if p) or artifact.id
    fmt = artifact.labels.get("format", "")
    name = f"{stem}.{fmt}" if fmt else stem
    return re.sub(r"[^A-Za-z0-9._+-]", "_", name)[:200]


class StorageCore:
    def __init__(
        self,
        store: ObjectStore,
        events: Publisher,
        config: CoreConfig | None = None,
        signer: UrlSigner | None = None,
        quotas: Quotas | None = None,
    ) -> None:
        self.store = store
        self.events = events
        self.config = config or CoreConfig()
        self.signer = signer
        self.quotas = quotas or Quotas({})
        self.index = ArtifactIndex(store, self._record)
        self.sharing = BlobSharing(store, self._record, self._at, self.config.commit_wait)
        self.uploads = Uploads(
            store,
            self._commit,
            part_size=self.config.part_size,
            concurrency=self.config.upload_concurrency,
            ttl=self.config.upload_ttl,
            admit=self._admit,
        )
        self.checkpoint: Checkpoint | None = None
        # The upload sessions are Uploads' (which calls back _commit below); the
        # servicer and the janitor reach them through the core's names.
        self.create_upload = self.uploads.create
        self.put_part = self.uploads.put_part
        self.get_upload = self.uploads.get
        self.abort_upload = self.uploads.abort
        self.complete_upload = self.uploads.complete
        self.upload = self.uploads.upload  # one-shot: parts stored while more arrive
        self.sweep = self.uploads.sweep  # the janitor: aborts abandoned uploads

    async def _at(self, point: str) -> None:
        if self.checkpoint is not None:
            await self.checkpoint(point)

    # ---- records -------------------------------------------------------------

    async def _get_json(self, key: str) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(await self.store.get(key))
        return data

    async def _put_json(self, key: str, value: dict[str, Any]) -> None:
        await self.store.put(key, json.dumps(value, sort_keys=True).encode())

    async def stat(self, artifact_id: str) -> Artifact:
        """The artifact, if the caller's tenant may see it: another tenant's
        is NOT_FOUND in the same words as an unknown id."""
        check_id(artifact_id, "artifact id")
        try:
            artifact = Artifact.from_record(await self._get_json(keys.artifact_key(artifact_id)))
        except NotFound:
            artifact = None
        if artifact is None or not visible(artifact.tenant):
            raise NotFound(f"artifact {artifact_id} not found")
        return artifact

    # ---- commit --------------------------------------------------------------

    async def _commit(self, session: UploadSession, checksums: Checksums, size: int) -> Artifact:
        artifact_id = new_id()
        # Tell the janitor which artifact this session becomes, so it never
        # deletes the blob of an artifact whose commit was interrupted.
        record = session.to_record() | {"artifact_id": artifact_id}
        await self.store.put(keys.session_key(session.upload_id), json.dumps(record).encode())
        # The ref comes before the content mapping is read (sharing.dedup): the
        # order that lets a racing delete see this upload (sharing.in_use).
        await self.store.put(keys.ref_prefix(checksums.sha256) + artifact_id, b"")
        await self._at("commit.referenced")
        blob = await self.sharing.dedup(session.blob, checksums.sha256, size)
        artifact = Artifact(
            id=artifact_id,
            size=size,
            checksums=checksums,
            labels=session.labels,
            created_at=datetime.now(UTC),
            blob=blob,
            tenant=session.tenant,
        )
        await self.index.add(artifact_id, artifact.indexed())
        await self._put_json(keys.artifact_key(artifact_id), artifact.to_record())
        await self.store.delete(keys.session_key(session.upload_id))
        log.info("stored artifact %s (%d bytes, sha256 %s)", artifact_id, size, checksums.sha256)
        await self.events.publish("artifact.stored", artifact_id, artifact.public())
        return artifact

    # ---- artifacts -----------------------------------------------------------

    async def list_artifacts(
        self, selector: dict[str, str], page_size: int = 0, page_token: str = ""
    ) -> tuple[list[Artifact], str]:
        """Artifacts matching every label of selector, in id (creation) order.
        The token is the last id of the page: ids sort like the index keys, so
        a page resumes from it on any replica, through any index."""
        selector = validate_labels(selector, "label_selector")
        if (tenant := scope()) is not None:  # a tenant lists its own only
            selector[TENANT_LABEL] = tenant
        page_size = page_size or DEFAULT_PAGE
        if not 1 <= page_size <= MAX_PAGE:
            raise InvalidArgument(f"page_size: must be 1..{MAX_PAGE}, got {page_size}")
        if page_token:
            check_id(page_token, "page_token")
        if await self.index.ready():
            return await self.index.page(selector, page_size, page_token)
        return await self.index.scan(selector, page_size, page_token)

    async def stored_bytes(self, tenant: str) -> int:
        """The sizes of the tenant's artifacts, each counted whole (its quota's
        measure): its own listing index walked to the end."""
        selector, total, after = {TENANT_LABEL: tenant}, 0, ""
        while True:
            if await self.index.ready():
                page, after = await self.index.page(selector, MAX_PAGE, after)
            else:
                page, after = await self.index.scan(selector, MAX_PAGE, after)
            total += sum(a.size for a in page)
            if not after:
                return total

    async def _admit(self, tenant: str, size: int) -> None:
        """ResourceExhausted if size more bytes would pass the tenant's quota."""
        limit = self.quotas.of(tenant).stored_bytes
        if limit is not None:
            check(tenant, "stored bytes", await self.stored_bytes(tenant), size, limit)

    async def rebuild_index(self, force: bool = False) -> int:
        """Indexes records written before the index existed (once per store)."""
        return await self.index.rebuild(force)

    async def _record(self, artifact_id: str) -> Artifact | None:
        return await self._maybe_record(keys.artifact_key(artifact_id))

    async def _maybe_record(self, key: str) -> Artifact | None:
        try:
            return Artifact.from_record(await self._get_json(key))
        except NotFound:
            return None  # deleted while we listed

    async def delete(self, artifact_id: str) -> None:
        artifact = await self.stat(artifact_id)
        # Out of the listings first (see kiln_storage.index): if this delete
        # fails midway, the record is still there and a retry finishes it.
        await self.index.remove(artifact_id, artifact.indexed())
        await self.store.delete(keys.artifact_key(artifact_id))
        await self.store.delete(keys.ref_prefix(artifact.checksums.sha256) + artifact_id)
        if not await self.sharing.in_use(artifact):
            await self._at("delete.blob")
            await self.store.delete(artifact.blob)
        log.info("deleted artifact %s", artifact_id)
        await self.events.publish("artifact.deleted", artifact_id, artifact.public())

    async def read(
        self, artifact_id: str, offset: int = 0, length: int = 0
    ) -> tuple[Artifact, AsyncIterator[bytes]]:
        artifact = await self.stat(artifact_id)
        if offset < 0 or length < 0:
            raise InvalidArgument("offset and length must not be negative")
        if offset > artifact.size:
            raise InvalidArgument(f"offset {offset} is past the end ({artifact.size} bytes)")
        count = min(length or artifact.size, artifact.size - offset)
        if count == 0:
            return artifact, empty()
        return artifact, read_ahead(self.store.read(artifact.blob, offset, count))

    async def download_url(
        self, artifact_id: str, expires: timedelta | None = None
    ) -> tuple[str, datetime]:
        artifact = await self.stat(artifact_id)
        expires = expires or self.config.url_ttl
        if not timedelta(seconds=1) <= expires <= self.config.max_url_ttl:
            raise InvalidArgument(
                f"expires_in: must be between 1 s and {self.config.max_url_ttl}, got {expires}"
            )
        name = download_name(artifact)
        url = self.store.presign(artifact.blob, expires, name)
        if url is None:
            if self.signer is None:
                raise FailedPrecondition("this storage backend has no download URLs configured")
            url = self.signer.url(artifact_id, name, expires)
        return url, datetime.now(UTC) + expires
