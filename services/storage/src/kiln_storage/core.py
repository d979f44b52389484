"""The storage core: artifacts, uploads, deduplication and checksums.

Transport-free: the gRPC servicer and the HTTP server both call it. Object
layout in the backend:
  artifacts/<id>.json         the artifact record; written last, so an artifact
                              is visible only once whole
  uploads/<upload id>.json    an upload session (resumable, any replica)
  blobs/<upload id>           the bytes, assembled by a multipart upload
  content/sha256/<digest>     which blob holds these bytes (deduplication)
  refs/<digest>/<artifact id> one marker per artifact sharing that content
  index/...                   the listing index (kiln_storage.index): markers
                              written before the record and removed before it

Sharing a blob between an upload and a delete needs no lock (see _dedup and
_blob_in_use): each side writes first and reads the other's state after, so at
least one of them sees the other.
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
from kiln_storage.backends import ObjectStore
from kiln_storage.index import STALE_AFTER, ArtifactIndex, bounded, id_time
from kiln_storage.model import (
    Artifact,
    Checksums,
    Hashers,
    Part,
    UploadSession,
    validate_labels,
)

log = logging.getLogger(__name__)

MIN_PART = 5 * 1024 * 1024  # S3's minimum for every part but the last
MAX_PART = 64 * 1024 * 1024  # a part is buffered in memory
MAX_PARTS = 10_000
MAX_PAGE = 1000
DEFAULT_PAGE = 100
REF_BATCH = 100


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


def _artifact_key(artifact_id: str) -> str:
    return f"artifacts/{artifact_id}.json"


def _session_key(upload_id: str) -> str:
    return f"uploads/{upload_id}.json"


def _content_key(sha256: str) -> str:
    return f"content/sha256/{sha256}"


def _ref_prefix(sha256: str) -> str:
    return f"refs/{sha256}/"


def download_name(artifact: Artifact) -> str:
    """A safe file name for Content-Disposition: name-version.format, or the id."""
    parts = [artifact.labels.get(k, "") for k in ("name", "version")]
    stem = "-".join(p for p in parts if p) or artifact.id
    fmt = artifact.labels.get("format", "")
    name = f"{stem}.{fmt}" if fmt else stem
    return re.sub(r"[^A-Za-z0-9._+-]", "_", name)[:200]


class _Digest:
    """Whole-file digests computed as parts arrive.

    Parts may arrive a little out of order (a client sends several at once):
    up to HOLD_PARTS early ones wait in memory for their predecessors. A part
    re-sent, too far ahead, or sent to another replica makes it give up;
    completion then reads the object back once to hash it."""

    HOLD_PARTS = 8

    def __init__(self) -> None:
        self._hashers = Hashers()
        self._next = 1
        self._held: dict[int, bytes] = {}
        self._valid = True
        self._tail: asyncio.Future[None] | None = None

    def feed(self, number: int, data: bytes) -> None:
        if not self._valid:
            return
        if (
            number < self._next
            or number in self._held
            or (number > self._next and len(self._held) >= self.HOLD_PARTS)
        ):
            self._valid = False
            self._held.clear()
            return
        self._held[number] = data
        while self._next in self._held:
            self._chain(self._held.pop(self._next))
            self._next += 1

    def _chain(self, data: bytes) -> None:
        previous = self._tail

        async def step() -> None:
            if previous is not None:
                await previous
            # hashlib releases the GIL on large buffers: the four run in parallel.
            await asyncio.gather(
                *(asyncio.to_thread(h.update, data) for h in self._hashers.by_alg.values())
            )

        self._tail = asyncio.ensure_future(step())

    async def result(self, count: int) -> Checksums | None:
        if not self._valid or self._next != count + 1 or self._held:
            return None
        if self._tail is not None:
            await self._tail
        return self._hashers.result()

    def cancel(self) -> None:
        self._held.clear()
        if self._tail is not None:
            self._tail.cancel()


async def _rechunk(chunks: AsyncIterable[bytes], size: int) -> AsyncIterator[bytes]:
    """Regroups a stream of chunks into pieces of exactly size bytes (the last
    shorter), copying each byte once."""
    held: list[memoryview] = []
    have = 0
    async for chunk in chunks:
        view = memoryview(chunk)
        while view:
            take = min(len(view), size - have)
            held.append(view[:take])
            have += take
            view = view[take:]
            if have == size:
                yield b"".join(held)
                held, have = [], 0
    if have:
        yield b"".join(held)


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
        self.checkpoint: Checkpoint | None = None
        self._digests: dict[str, _Digest] = {}

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
            return Artifact.from_record(await self._get_json(_artifact_key(artifact_id)))
        except NotFound:
            raise NotFound(f"artifact {artifact_id} not found") from None

    async def _session(self, upload_id: str) -> UploadSession:
        check_id(upload_id, "upload id")
        try:
            return UploadSession.from_record(await self._get_json(_session_key(upload_id)))
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
            await self._put_json(_session_key(upload_id), session.to_record())
        except BaseException:
            await self.store.mp_abort(blob, backend_id)
            raise
        self._digests[upload_id] = _Digest()
        return session

    async def _store_part(self, session: UploadSession, number: int, data: bytes) -> None:
        self._digests.setdefault(session.upload_id, _Digest()).feed(number, data)
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
        await self.store.delete(_session_key(session.upload_id))

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
        await self.store.put(_session_key(session.upload_id), json.dumps(record).encode())
        # The ref comes before the content mapping is read (in _dedup): the
        # order that lets a racing delete see this upload (see _blob_in_use).
        await self.store.put(_ref_prefix(checksums.sha256) + artifact_id, b"")
        await self._at("commit.referenced")
        blob = await self._dedup(session.blob, checksums.sha256, size)
        artifact = Artifact(
            id=artifact_id,
            size=size,
            checksums=checksums,
            labels=session.labels,
            created_at=datetime.now(UTC),
            blob=blob,
        )
        await self.index.add(artifact_id, artifact.labels)
        await self._put_json(_artifact_key(artifact_id), artifact.to_record())
        await self.store.delete(_session_key(session.upload_id))
        log.info("stored artifact %s (%d bytes, sha256 %s)", artifact_id, size, checksums.sha256)
        await self.events.publish("artifact.stored", artifact_id, artifact.public())
        return artifact

    async def _dedup(self, blob: str, sha256: str, size: int) -> str:
        """Returns the blob to use: an existing one with the same bytes if any
        (and drops the new copy), else the new one, recorded for next time.

        Called after this upload's ref is written. A delete removes the
        mapping before its last look at the refs, so if the mapping still
        names a blob here, that look will find our ref and keep the blob."""
        with contextlib.suppress(NotFound):
            existing = (await self.store.get(_content_key(sha256))).decode()
            if existing != blob and await self.store.size(existing) == size:
                await self._at("commit.sharing")
                await self.store.delete(blob)
                return existing
        await self.store.put(_content_key(sha256), blob.encode())
        return blob

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
            async for data in _rechunk(chunks, session.part_size):
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
        return await self._maybe_record(_artifact_key(artifact_id))

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
        await self.store.delete(_artifact_key(artifact_id))
        await self.store.delete(_ref_prefix(artifact.checksums.sha256) + artifact_id)
        if not await self._blob_in_use(artifact):
            await self._at("delete.blob")
            await self.store.delete(artifact.blob)
        log.info("deleted artifact %s", artifact_id)
        await self.events.publish("artifact.deleted", artifact_id, artifact.public())

    async def _blob_in_use(self, artifact: Artifact) -> bool:
        """Whether another artifact uses (or may be about to use) this blob.

        First a cheap look: another whole artifact on the blob settles it, and
        the content mapping stays for later uploads. Otherwise the mapping is
        removed (if it names this blob) before the refs are read again. An
        upload writes its ref before it reads the mapping (_commit, _dedup):
        if it still found the mapping, its ref is older than this second
        look, which sees it and keeps the blob; if it did not, it keeps its
        own copy. Either way no record ends up naming a deleted blob."""
        if await self._shared(artifact, wait=False):
            return True
        sha = artifact.checksums.sha256
        with contextlib.suppress(NotFound):
            if (await self.store.get(_content_key(sha))).decode() == artifact.blob:
                await self.store.delete(_content_key(sha))
        await self._at("delete.unmapped")
        return await self._shared(artifact, wait=True)

    async def _shared(self, artifact: Artifact, wait: bool) -> bool:
        """True if a ref of the same content names an artifact on this blob.
        A ref whose record is not written yet is an upload committing: with
        wait, it is given commit_wait to finish, and if it does not, the blob
        is kept (a leak is safe; a record naming a deleted blob is not).
        Refs are read a batch at a time: identical builds may share a blob
        thousands of times, and the first sharer found settles it."""
        prefix = _ref_prefix(artifact.checksums.sha256)
        deadline = asyncio.get_running_loop().time() + self.config.commit_wait.total_seconds()
        after = ""
        while keys := await self.store.list_keys(prefix, start_after=after, limit=REF_BATCH):
            after = keys[-1]
            ids = [k[len(prefix) :] for k in keys]
            if wait:
                blobs = await bounded(self._blob_of_ref(prefix, i, deadline) for i in ids)
                if any(b is None or b == artifact.blob for b in blobs):
                    return True
            else:
                records = await bounded(self._record(i) for i in ids)
                if any(r is not None and r.blob == artifact.blob for r in records):
                    return True
        return False

    async def _blob_of_ref(self, prefix: str, artifact_id: str, deadline: float) -> str | None:
        """The blob of the ref's artifact; '' if the ref is gone (that artifact
        was deleted); None if still unknown at the deadline."""
        loop = asyncio.get_running_loop()
        # A ref this old without a record is left by a crashed commit: waiting
        # cannot help, and keeping the blob is the safe answer.
        patient = id_time(artifact_id) > datetime.now(UTC) - STALE_AFTER
        while True:
            record = await self._record(artifact_id)
            if record is not None:
                return record.blob
            if await self.store.size(prefix + artifact_id) is None:
                return ""
            if not patient or loop.time() >= deadline:
                return None
            await asyncio.sleep(0.05)

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
            return artifact, _empty()
        return artifact, _read_ahead(self.store.read(artifact.blob, offset, count))

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
            if committed and await self.store.size(_artifact_key(committed)) is not None:
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


async def _read_ahead(chunks: AsyncIterator[bytes], depth: int = 4) -> AsyncIterator[bytes]:
    """Keeps reading from the backend while the caller sends what it has, so
    storage reads and network writes overlap instead of taking turns."""
    queue: asyncio.Queue[bytes | BaseException | None] = asyncio.Queue(depth)

    async def pump() -> None:
        try:
            async for chunk in chunks:
                await queue.put(chunk)
            await queue.put(None)
        except Exception as exc:  # noqa: BLE001 - handed to the consumer below
            await queue.put(exc)

    task = asyncio.create_task(pump())
    try:
        while (item := await queue.get()) is not None:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def _empty() -> AsyncIterator[bytes]:
    return
    yield  # pragma: no cover - makes this an async generator
