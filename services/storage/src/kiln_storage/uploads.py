"""Upload sessions: an upload from its first part to the moment its bytes are
verified, then handed to the core to become an artifact.

A session is a record in the store (kiln_storage.keys) plus the backend's
multipart upload of its blob, so a client may send the next part to any
replica. Here: creating a session, taking parts (and feeding the whole-file
digests as they arrive, kiln_storage.streams), checking a completed upload's
parts, size and checksums, the one-shot upload built on the same parts, and
the janitor that ends the sessions nobody completed. Writing the artifact
(ref, sharing, index, record) is the core's commit, called back from here.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
from collections.abc import AsyncIterable, Awaitable, Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

from kiln_common.auth.identity import check_labels_writable, owner, visible
from kiln_common.errors import FailedPrecondition, InvalidArgument, NotFound, ResourceExhausted
from kiln_common.ids import check_id, new_id
from kiln_storage import keys
from kiln_storage.backends import ObjectStore
from kiln_storage.model import (
    Artifact,
    Checksums,
    Hashers,
    Part,
    UploadSession,
    validate_labels,
)
from kiln_storage.streams import PartDigest, rechunk

log = logging.getLogger(__name__)

MIN_PART = 5 * 1024 * 1024  # S3's minimum for every part but the last
MAX_PART = 64 * 1024 * 1024  # a part is buffered in memory
MAX_PARTS = 10_000

# Turns a verified upload (its session, checksums and size) into an artifact.
Commit = Callable[[UploadSession, Checksums, int], Awaitable[Artifact]]


# Checks that the tenant may store this many more bytes (ResourceExhausted if not).
Admit = Callable[[str, int], Awaitable[None]]


async def _anything(tenant: str, size: int) -> None:
    return None


class Uploads:
    def __init__(
        self,
        store: ObjectStore,
        commit: Commit,
        part_size: int,
        concurrency: int,
        ttl: timedelta,
        admit: Admit | None = None,
    ) -> None:
        self.store = store
        self._commit = commit
        self._admit = admit or _anything
        self.part_size = part_size  # when the client does not choose one
        self.concurrency = concurrency  # parts of one one-shot upload in flight
        self.ttl = ttl  # a session older than this is the janitor's
        # Per upload id, the digests of the parts this replica received in order.
        self._digests: dict[str, PartDigest] = {}

    async def _session(self, upload_id: str) -> UploadSession:
        check_id(upload_id, "upload id")
        try:
            session = UploadSession.from_record(await self._get_json(keys.session_key(upload_id)))
        except NotFound:
            session = None
        if session is None or not visible(session.tenant):  # another tenant's: the same words
            raise NotFound(f"upload {upload_id} not found (completed, aborted or expired)")
        return session

    async def _get_json(self, key: str) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(await self.store.get(key))
        return data

    async def _put_json(self, key: str, value: dict[str, Any]) -> None:
        await self.store.put(key, json.dumps(value, sort_keys=True).encode())

    # ---- the resumable protocol ----------------------------------------------

    async def create(
        self,
        labels: dict[str, str],
        expected: Checksums,
        size: int | None = None,
        part_size: int = 0,
    ) -> UploadSession:
        labels = validate_labels(labels)
        check_labels_writable(labels)
        expected = expected.validated()
        if size is not None:  # a declared size over the quota: refused before any byte
            await self._admit(owner(), size)
        part_size = part_size or self.part_size
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
            tenant=owner(),
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

    async def get(self, upload_id: str) -> UploadSession:
        session = await self._session(upload_id)
        parts = await self.store.mp_parts(session.blob, session.backend_upload_id)
        return replace(session, parts=[Part(n, s) for n, s in sorted(parts.items())])

    async def abort(self, upload_id: str) -> None:
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

    async def complete(self, upload_id: str) -> Artifact:
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
        try:
            await self._admit(session.tenant, total)
        except ResourceExhausted:
            await self._discard(session)
            raise
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

    # ---- one-shot ------------------------------------------------------------

    async def upload(
        self,
        labels: dict[str, str],
        expected: Checksums,
        size: int | None,
        chunks: AsyncIterable[bytes],
    ) -> Artifact:
        """One-shot upload: parts are stored concurrently while more arrive."""
        session = await self.create(labels, expected, size)
        pending: set[asyncio.Task[None]] = set()
        slots = asyncio.Semaphore(self.concurrency)
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
            return await self.complete(session.upload_id)
        except BaseException:
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
            # Shielded: a cancelled client still must not leave parts behind.
            with contextlib.suppress(NotFound):
                await asyncio.shield(self._discard(session))
            raise

    # ---- janitor -------------------------------------------------------------

    async def sweep(self, now: datetime | None = None) -> int:
        """Aborts upload sessions older than the TTL and backend multipart
        uploads no session knows of. Returns how many uploads it removed."""
        cutoff = (now or datetime.now(UTC)) - self.ttl
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
