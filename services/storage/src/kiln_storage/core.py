"""The storage core: artifacts, uploads, deduplication and checksums.

Transport-free: the gRPC servicer and the HTTP server both call it. Where
things are in the backend: kiln_storage.keys; the bytes' plumbing (digests
fed part by part, regrouping, read-ahead): kiln_storage.streams.

Identical bytes are stored once (kiln_storage.sharing).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import re
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from kiln_common.errors import FailedPrecondition, InvalidArgument, NotFound
from kiln_common.events import Publisher
from kiln_common.ids import check_id, new_id
from kiln_storage import keys
from kiln_storage.backends import ObjectStore
from kiln_storage.index import ArtifactIndex
from kiln_storage.model import (
    Artifact,
    Checksums,
    Hashers,
    Part,
    UploadSession,
    validate_labels,
)
from kiln_storage.sharing import BlobSharing
from kiln_storage.streams import PartDigest, empty, read_ahead, rechunk

log = logging.getLogger(__name__)

MIN_PART = 5 * 1024 * 1024  # S3's minimum for every part but the last
MAX_PART = 64 * 1024 * 1024  # a part is buffered in memory
MAX_PARTS = 10_000
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
    ) -> None:
        self.store = store
        self.events = events
        self.config = config or CoreConfig()
        self.signer = signer
        self.index = ArtifactIndex(store, self._record)
        self.sharing = BlobSharing(store, self._record, self._at, self.config.commit_wait)
        self.checkpoint: Checkpoint | None = None
        self._digests: dict[str, PartDigest] = {}

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
        check_id(artifact_id, "artifact id")
        try:
            return Artifact.from_record(await self._get_json(keys.artifact_key(artifact_id)))
        except NotFound:
            raise NotFound(f"artifact {artifact_id} not found") from None

    async def _session(self, upload_id: str) -> UploadSession:
        check_id(upload_id, "upload id")
        try:
            return UploadSession.from_record(await self._get_json(keys.session_key(upload_id)))
        except NotFound:
            raise NotFound(
                f"upload {upload_id} not found (completed, aborted or expired)"
            ) from None

    # ---- uploads -------------------------------------------------------------

    async def create_upload(
        self,
        labels: dict[str, str],
        expected: Checksums,
        size: int | None = None,
        part_size: int = 0,
    ) -> UploadSession:
        labels = validate_labels(labels)
        expected = expected.validated()
        part_size = part_size or self.config.part_size
        if not MIN_PART <= part_size <= MAX_PART:
            raise InvalidArgument(
                f"part_size: must be between {MIN_PART} and {MAX_PART} bytes, got {part_size}"
            )
        if size is not None and size == 0:
            raise InvalidArgument("size: an artifact cannot be empty")
        if size is not None and size > part_size * MAX_PARTS:
            raise InvalidArgument(
                f"size: {size} bytes needs more than {MAX_PARTS} parts of {part_size}"
            )
        upload_id = new_id()
        blob = f"blobs/{upload_id}"
        backend_id = await self.store.mp_create(blob, part_size)
        session = UploadSession(
            upload_id=upload_id,
            labels=labels,
            expected=expected,
            size=size,
            part_size=part_size,
            blob=blob,
            backend_upload_id=backend_id,
            created_at=datetime.now(UTC),
        )
        try:
            await self._put_json(keys.session_key(upload_id), session.to_record())
        except BaseException:
            await self.store.mp_abort(blob, backend_id)
            raise
        self._digests[upload_id] = PartDigest()
        return session

    async def _store_part(self, session: UploadSession, number: int, data: bytes) -> None:
        self._digests.setdefault(session.upload_id, PartDigest()).feed(number, data)
        await self.store.mp_put(session.blob, session.backend_upload_id, number, data)

    async def put_part(
        self,
        upload_id: str,
        number: int,
        chunks: AsyncIterable[bytes],
        expected_sha256: str = "",
    ) -> Part:
        session = await self._session(upload_id)
        if not 1 <= number <= MAX_PARTS:
            raise InvalidArgument(f"part number: must be 1..{MAX_PARTS}, got {number}")
        held: list[bytes] = []
        have = 0
        async for chunk in chunks:
            have += len(chunk)
            if have > session.part_size:
                raise InvalidArgument(
                    f"part {number}: larger than the upload's part size {session.part_size}"
                )
            held.append(chunk)
        data = b"".join(held)
        if not data:
            raise InvalidArgument(f"part {number}: empty")
        sha256 = ""
        if expected_sha256:
            want = Checksums(sha256=expected_sha256).validated().sha256
            sha256 = await asyncio.to_thread(lambda: hashlib.sha256(data).hexdigest())
            if sha256 != want:
                raise InvalidArgument(
                    f"part {number}: sha256 mismatch, declared {want}, got {sha256}; not stored"
                )
        await self._store_part(session, number, data)
        return Part(number, len(data), sha256)

    async def get_upload(self, upload_id: str) -> UploadSession:
        session = await self._session(upload_id)
        parts = await self.store.mp_parts(session.blob, session.backend_upload_id)
        return replace(session, parts=[Part(n, s) for n, s in sorted(parts.items())])

    async def abort_upload(self, upload_id: str) -> None:
        session = await self._session(upload_id)
        await self._discard(session)

    async def _discard(self, session: UploadSession) -> None:
        digest = self._digests.pop(session.upload_id, None)
        if digest is not None:
            digest.cancel()
        await self.store.mp_abort(session.blob, session.backend_upload_id)
        await self.store.delete(session.blob)
        await self.store.delete(keys.session_key(session.upload_id))

    def _check_parts(self, session: UploadSession, parts: dict[int, int]) -> tuple[int, int]:
        count = max(parts, default=0)
        missing = [n for n in range(1, count + 1) if n not in parts]
        if missing:
            raise FailedPrecondition(
                f"upload {session.upload_id}: parts missing: {', '.join(map(str, missing[:20]))}"
            )
        short = [n for n in range(1, count) if parts[n] != session.part_size]
        if short:
            raise FailedPrecondition(
                f"upload {session.upload_id}: part {short[0]} has {parts[short[0]]} bytes; "
                f"every part but the last must have {session.part_size}"
            )
        return count, sum(parts.values())

    async def complete_upload(self, upload_id: str) -> Artifact:
        session = await self._session(upload_id)
        parts = await self.store.mp_parts(session.blob, session.backend_upload_id)
        count, total = self._check_parts(session, parts)
        if total == 0 or (session.size is not None and total != session.size):
            await self._discard(session)
            if total == 0:
                raise InvalidArgument("empty upload: no bytes were sent; nothing was stored")
            raise InvalidArgument(
                f"size mismatch: declared {session.size} bytes, got {total}; nothing was stored"
            )
        digest = self._digests.get(upload_id)
        checksums = await digest.result(count) if digest else None
        await self.store.mp_complete(session.blob, session.backend_upload_id, count, total)
        if checksums is None:
            checksums = await self._hash_object(session.blob)
        wrong = session.expected.mismatches(checksums)
        if wrong:
            await self._discard(session)
            raise InvalidArgument(f"checksum mismatch ({'; '.join(wrong)}); nothing was stored")
        artifact = await self._commit(session, checksums, total)
        self._digests.pop(upload_id, None)
        return artifact

    async def _hash_object(self, key: str) -> Checksums:
        hashers = Hashers()
        async for chunk in self.store.read(key):
            await asyncio.to_thread(hashers.update, chunk)
        return hashers.result()

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
        )
        await self.index.add(artifact_id, artifact.labels)
        await self._put_json(keys.artifact_key(artifact_id), artifact.to_record())
        await self.store.delete(keys.session_key(session.upload_id))
        log.info("stored artifact %s (%d bytes, sha256 %s)", artifact_id, size, checksums.sha256)
        await self.events.publish("artifact.stored", artifact_id, artifact.public())
        return artifact

    async def upload(
        self,
        labels: dict[str, str],
        expected: Checksums,
        size: int | None,
        chunks: AsyncIterable[bytes],
    ) -> Artifact:
        """One-shot upload: parts are stored concurrently while more arrive."""
        session = await self.create_upload(labels, expected, size)
        pending: set[asyncio.Task[None]] = set()
        slots = asyncio.Semaphore(self.config.upload_concurrency)
        received = 0
        try:
            number = 0
            async for data in rechunk(chunks, session.part_size):
                number += 1
                received += len(data)
                if size is not None and received > size:
                    raise InvalidArgument(f"size mismatch: more than the declared {size} bytes")
                await slots.acquire()
                for task in [t for t in pending if t.done()]:
                    pending.discard(task)
                    task.result()  # surface a failed part now, not at the end
                task = asyncio.create_task(self._store_part(session, number, data))
                task.add_done_callback(lambda _: slots.release())
                pending.add(task)
            await asyncio.gather(*pending)
            pending.clear()
            return await self.complete_upload(session.upload_id)
        except BaseException:
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
            # Shielded: a cancelled client still must not leave parts behind.
            with contextlib.suppress(NotFound):
                await asyncio.shield(self._discard(session))
            raise

    # ---- artifacts -----------------------------------------------------------

    async def list_artifacts(
        self, selector: dict[str, str], page_size: int = 0, page_token: str = ""
    ) -> tuple[list[Artifact], str]:
        """Artifacts matching every label of selector, in id (creation) order.
        The token is the last id of the page: ids sort like the index keys, so
        a page resumes from it on any replica, through any index."""
        selector = validate_labels(selector, "label_selector")
        page_size = page_size or DEFAULT_PAGE
        if not 1 <= page_size <= MAX_PAGE:
            raise InvalidArgument(f"page_size: must be 1..{MAX_PAGE}, got {page_size}")
        if page_token:
            check_id(page_token, "page_token")
        if await self.index.ready():
            return await self.index.page(selector, page_size, page_token)
        return await self.index.scan(selector, page_size, page_token)

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
        await self.index.remove(artifact_id, artifact.labels)
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

    # ---- janitor -------------------------------------------------------------

    async def sweep(self, now: datetime | None = None) -> int:
        """Aborts upload sessions older than the TTL and backend multipart
        uploads no session knows of. Returns how many uploads it removed."""
        cutoff = (now or datetime.now(UTC)) - self.config.upload_ttl
        live: set[str] = set()  # backend upload ids of sessions still in time
        live_sessions: set[str] = set()
        removed = 0
        for key in await self.store.list_keys("uploads/"):
            try:
                raw = await self._get_json(key)
            except NotFound:
                continue
            session = UploadSession.from_record(
                {k: v for k, v in raw.items() if k != "artifact_id"}
            )
            if session.created_at >= cutoff:
                live.add(session.backend_upload_id)
                live_sessions.add(session.upload_id)
                continue
            committed = raw.get("artifact_id")
            if committed and await self.store.size(keys.artifact_key(committed)) is not None:
                await self.store.delete(key)  # the artifact is whole; only the session lingered
                continue
            log.info("janitor: aborting expired upload %s", session.upload_id)
            await self._discard(session)
            removed += 1
        for mp in await self.store.mp_list():
            if mp.upload_id not in live and mp.initiated < cutoff:
                log.info("janitor: aborting orphaned multipart upload of %s", mp.key)
                await self.store.mp_abort(mp.key, mp.upload_id)
                removed += 1
        # Digests of sessions that ended elsewhere (another replica's janitor or
        # completion) would otherwise keep their held parts in memory.
        for upload_id in set(self._digests) - live_sessions:
            self._digests.pop(upload_id).cancel()
        return removed
