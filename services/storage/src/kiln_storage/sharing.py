"""Identical bytes stored once: an upload whose content is already in a blob
takes that blob, and a delete removes a blob only when no other artifact uses
it, or may be about to.

Sharing a blob between an upload and a delete needs no lock: each side writes
first and reads the other's state after, so at least one of them sees the
other (dedup and in_use say how)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

from kiln_common.errors import NotFound
from kiln_storage import keys
from kiln_storage.backends import ObjectStore
from kiln_storage.index import STALE_AFTER, bounded, id_time
from kiln_storage.model import Artifact

REF_BATCH = 100


class BlobSharing:
    def __init__(
        self,
        store: ObjectStore,
        record: Callable[[str], Awaitable[Artifact | None]],
        at: Callable[[str], Awaitable[None]],
        commit_wait: timedelta,
    ) -> None:
        self.store = store
        self.record = record  # an artifact's record, None if there is none
        self._at = at  # the core's checkpoint (tests force interleavings there)
        self.commit_wait = commit_wait

    async def dedup(self, blob: str, sha256: str, size: int) -> str:
        """Returns the blob to use: an existing one with the same bytes if any
        (and drops the new copy), else the new one, recorded for next time.

        Called after this upload's ref is written. A delete removes the
        mapping before its last look at the refs, so if the mapping still
        names a blob here, that look will find our ref and keep the blob."""
        with contextlib.suppress(NotFound):
            existing = (await self.store.get(keys.content_key(sha256))).decode()
            if existing != blob and await self.store.size(existing) == size:
                await self._at("commit.sharing")
                await self.store.delete(blob)
                return existing
        await self.store.put(keys.content_key(sha256), blob.encode())
        return blob

    async def in_use(self, artifact: Artifact) -> bool:
        """Whether another artifact uses (or may be about to use) this blob.

        First a cheap look: another whole artifact on the blob settles it, and
        the content mapping stays for later uploads. Otherwise the mapping is
        removed (if it names this blob) before the refs are read again. An
        upload writes its ref before it reads the mapping (core._commit, dedup):
        if it still found the mapping, its ref is older than this second
        look, which sees it and keeps the blob; if it did not, it keeps its
        own copy. Either way no record ends up naming a deleted blob."""
        if await self._shared(artifact, wait=False):
            return True
        sha = artifact.checksums.sha256
        with contextlib.suppress(NotFound):
            if (await self.store.get(keys.content_key(sha))).decode() == artifact.blob:
                await self.store.delete(keys.content_key(sha))
        await self._at("delete.unmapped")
        return await self._shared(artifact, wait=True)

    async def _shared(self, artifact: Artifact, wait: bool) -> bool:
        """True if a ref of the same content names an artifact on this blob.
        A ref whose record is not written yet is an upload committing: with
        wait, it is given commit_wait to finish, and if it does not, the blob
        is kept (a leak is safe; a record naming a deleted blob is not).
        Refs are read a batch at a time: identical builds may share a blob
        thousands of times, and the first sharer found settles it."""
        prefix = keys.ref_prefix(artifact.checksums.sha256)
        deadline = asyncio.get_running_loop().time() + self.commit_wait.total_seconds()
        after = ""
        while refs := await self.store.list_keys(prefix, start_after=after, limit=REF_BATCH):
            after = refs[-1]
            ids = [k[len(prefix) :] for k in refs]
            if wait:
                blobs = await bounded(self._blob_of_ref(prefix, i, deadline) for i in ids)
                if any(b is None or b == artifact.blob for b in blobs):
                    return True
            else:
                records = await bounded(self.record(i) for i in ids)
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
            record = await self.record(artifact_id)
            if record is not None:
                return record.blob
            if await self.store.size(prefix + artifact_id) is None:
                return ""
            if not patient or loop.time() >= deadline:
                return None
            await asyncio.sleep(0.05)
