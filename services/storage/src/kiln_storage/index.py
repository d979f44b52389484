"""The listing index: empty marker objects kept in the backend itself.

Several storage replicas share one bucket, so the index cannot live in one
process: it is a set of empty objects whose keys end with the artifact id.
Both backends list keys sorted and from a start key, so a page of any index is
one bounded list call, whatever the number of artifacts:

  index/all/<artifact id>                      every artifact
  index/label/<key>/<value code>/<artifact id> every artifact with that label
  index/ready                                  written once the index covers
                                               every record (see rebuild)

Markers are written before the record and removed before it too, so a listed
marker always has its record, or an upload is about to write it. A marker
without a record is then normal for a moment (an upload committing) and
forever only after a crash: listing skips such markers and removes those older
than STALE_AFTER. A delete that fails midway leaves the record without its
markers: the artifact is out of listings already, and retrying the delete
finishes it. Records written before the index existed have no markers:
rebuild() adds those once.

Because a listed marker vouches for its record, and a record never changes,
each replica keeps the records it has read in a bounded cache: a page read
again costs one list call, not one read per artifact. Nothing in the cache can
make a deleted artifact appear: its markers are gone before its record is.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import re
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable
from datetime import UTC, datetime, timedelta
from typing import TypeVar

from kiln_common.ids import ID_RE
from kiln_storage.backends import ObjectStore
from kiln_storage.model import Artifact

log = logging.getLogger(__name__)

ALL_PREFIX = "index/all/"
LABEL_PREFIX = "index/label/"
READY_KEY = "index/ready"
INDEX_VERSION = 1
# Longer than any commit takes between its markers and its record: a marker
# older than this without a record is left over from a crash.
STALE_AFTER = timedelta(hours=1)
CONCURRENCY = 32  # record reads and marker writes in flight at once
REBUILD_BATCH = 1000
CACHED_RECORDS = 10_000  # a few MB; the pages read most are the first ones

_PLAIN_VALUE = re.compile(r"^[A-Za-z0-9._-]{0,100}$")
_CROCKFORD = "0123456789abcdefghjkmnpqrstvwxyz"

T = TypeVar("T")
ReadRecord = Callable[[str], Awaitable[Artifact | None]]


def value_code(value: str) -> str:
    """A key segment naming a label value: readable when the value is a safe
    short word, else its SHA-256 (values may hold '/', spaces, any Unicode,
    and up to 256 characters, more than a file name may have). The prefixes
    keep the two forms apart, so no plain value can pose as a hashed one."""
    if _PLAIN_VALUE.match(value):
        return f"v-{value}"
    return f"h-{hashlib.sha256(value.encode()).hexdigest()}"


def label_prefix(key: str, value: str) -> str:
    return f"{LABEL_PREFIX}{key}/{value_code(value)}/"


def marker_keys(artifact_id: str, labels: dict[str, str]) -> list[str]:
    return [ALL_PREFIX + artifact_id] + [
        label_prefix(k, v) + artifact_id for k, v in labels.items()
    ]


def id_time(artifact_id: str) -> datetime:
    """When an id was made: its first 10 characters are milliseconds since 1970."""
    ms = 0
    for char in artifact_id[:10]:
        ms = ms * 32 + _CROCKFORD.index(char)
    return datetime.fromtimestamp(ms / 1000, UTC)


async def bounded(jobs: Iterable[Awaitable[T]], limit: int = CONCURRENCY) -> list[T]:
    """Awaits every job, at most limit at once, results in order."""
    slots = asyncio.Semaphore(limit)

    async def one(job: Awaitable[T]) -> T:
        async with slots:
            return await job

    return await asyncio.gather(*(one(j) for j in jobs))


class ArtifactIndex:
    def __init__(self, store: ObjectStore, read: ReadRecord) -> None:
        self.store = store
        self._read_store = read
        self._cache: OrderedDict[str, Artifact] = OrderedDict()
        # Only True is remembered: once ready, an index stays ready (the
        # marker is never removed by the service), so this is no local state
        # that another replica could contradict.
        self._ready = False

    async def _read(self, artifact_id: str) -> Artifact | None:
        """The record, from the cache if this replica has read it before. Only
        for ids whose marker or record key was just listed: the listing, not
        the cache, says whether the artifact exists."""
        artifact = self._cache.get(artifact_id)
        if artifact is not None:
            self._cache.move_to_end(artifact_id)
            return artifact
        artifact = await self._read_store(artifact_id)
        if artifact is not None:
            self._cache[artifact_id] = artifact
            if len(self._cache) > CACHED_RECORDS:
                self._cache.popitem(last=False)
        return artifact

    # ---- writing ---------------------------------------------------------------

    async def add(self, artifact_id: str, labels: dict[str, str]) -> None:
        await bounded(self.store.put(k, b"") for k in marker_keys(artifact_id, labels))

    async def remove(self, artifact_id: str, labels: dict[str, str]) -> None:
        self._cache.pop(artifact_id, None)
        await bounded(self.store.delete(k) for k in marker_keys(artifact_id, labels))

    # ---- reading ---------------------------------------------------------------

    async def ready(self) -> bool:
        if not self._ready:
            self._ready = await self.store.size(READY_KEY) is not None
        return self._ready

    async def page(
        self, selector: dict[str, str], page_size: int, after: str
    ) -> tuple[list[Artifact], str]:
        """Up to page_size artifacts matching selector with ids after `after`,
        in id order, and the token of the next page ('' on the last)."""
        prefixes = [label_prefix(k, v) for k, v in selector.items()] or [ALL_PREFIX]
        prefix, batch = await self._driver(prefixes, after, page_size)
        found: list[Artifact] = []
        limit = page_size
        while batch:
            ids = [key[len(prefix) :] for key in batch]
            records = await bounded(self._read(i) for i in ids)
            await self._drop_stale(prefix, [i for i, r in zip(ids, records, strict=True) if not r])
            for artifact in records:
                if artifact is not None and artifact.matches(selector):
                    found.append(artifact)
                    if len(found) == page_size:
                        return found, artifact.id
            if len(batch) < limit:
                break  # the index has no more keys: spare one list call
            # Later batches are larger: the other labels of the selector may
            # match rarely, and each list call costs a round trip.
            limit = max(page_size - len(found), CONCURRENCY)
            batch = await self.store.list_keys(prefix, start_after=batch[-1], limit=limit)
        return found, ""

    async def _driver(self, prefixes: list[str], after: str, limit: int) -> tuple[str, list[str]]:
        """The index to walk, and its first batch. With several labels, the
        most selective one: the index that runs out first, else the one whose
        first `limit` keys span the most ids (ids grow with time, so a sparse
        index reaches further in as many keys)."""
        batches = await asyncio.gather(
            *(
                self.store.list_keys(p, start_after=p + after if after else "", limit=limit)
                for p in prefixes
            )
        )

        def rank(i: int) -> tuple[int, int, str]:
            keys = batches[i]
            if len(keys) < limit:
                return (1, -len(keys), "")
            return (0, 0, keys[-1][len(prefixes[i]) :])

        best = max(range(len(prefixes)), key=rank)
        return prefixes[best], batches[best]

    async def scan(
        self, selector: dict[str, str], page_size: int, after: str
    ) -> tuple[list[Artifact], str]:
        """The same page without the index, reading every record in turn: the
        way to list while the index is not ready yet."""
        start = f"artifacts/{after}.json" if after else ""
        found: list[Artifact] = []
        while keys := await self.store.list_keys(
            "artifacts/", start_after=start, limit=CONCURRENCY
        ):
            start = keys[-1]
            ids = [k.removeprefix("artifacts/").removesuffix(".json") for k in keys]
            for artifact in await bounded(self._read(i) for i in ids):
                if artifact is not None and artifact.matches(selector):
                    found.append(artifact)
                    if len(found) == page_size:
                        return found, artifact.id
        return found, ""

    async def _drop_stale(self, prefix: str, ids: list[str]) -> None:
        """Removes markers whose record is gone for good. A young one may be an
        upload about to write its record: it stays, and is only skipped."""
        cutoff = datetime.now(UTC) - STALE_AFTER
        old = [i for i in ids if ID_RE.match(i) and id_time(i) < cutoff]
        for artifact_id in old:
            log.info("index: removing stale marker %s%s", prefix, artifact_id)
        await bounded(self.store.delete(prefix + i) for i in old)

    # ---- rebuilding ------------------------------------------------------------

    async def rebuild(self, force: bool = False) -> int:
        """Adds the markers of every record, then writes index/ready. Needed
        once, for records written before the index existed; idempotent (a
        marker written twice is the same empty object), so replicas starting
        together may all run it. Returns how many records it indexed."""
        if not force and await self.ready():
            return 0
        started = time.monotonic()
        count = 0
        after = ""
        while keys := await self.store.list_keys(
            "artifacts/", start_after=after, limit=REBUILD_BATCH
        ):
            after = keys[-1]
            ids = [k.removeprefix("artifacts/").removesuffix(".json") for k in keys]
            records = [r for r in await bounded(self._read(i) for i in ids) if r is not None]
            await bounded(
                self.store.put(k, b"") for a in records for k in marker_keys(a.id, a.indexed())
            )
            count += len(records)
        note = {"version": INDEX_VERSION, "records": count, "at": datetime.now(UTC).isoformat()}
        await self.store.put(READY_KEY, json.dumps(note).encode())
        self._ready = True
        log.info("index: rebuilt over %d records in %.1f s", count, time.monotonic() - started)
        return count
