"""ListBuilds' index: each pod keeps, in memory, every build's id, state,
name and record, fed by a watch on the records bucket (JetStream delivers the
newest value of every key, then each change). A page is picked and answered
from the index without reading the bucket, so a page costs about the same
with 100,000 builds as with ten. The memory it takes is about the bucket's
size (a record is one to a few KiB).

Before answering, the index catches up with the bucket's last write, so a
build submitted through any pod is listed at once. An index that cannot
catch up (its watch was lost with NATS) is rebuilt, and that one call is
answered by reading every record, as before the index existed."""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import logging
from collections import Counter
from dataclasses import dataclass

from nats.js import JetStreamContext
from nats.js.kv import KV_DEL, KV_PURGE, KeyValue

from kiln_client import wire
from kiln_common.builds import Build
from kiln_common.lifecycle import State

log = logging.getLogger(__name__)
CATCH_UP_SECONDS = 2.0  # a watch that applies nothing this long is stuck
MAX_CATCH_UP_SECONDS = 60.0  # the longest a call waits for a loading index


@dataclass(frozen=True)
class Wanted:
    """Which builds a listing asks for: a state and a name (each "" or 0 for
    any), of one tenant (None: every tenant)."""

    state: State
    name: str
    tenant: str | None

    def matches(self, state: State, name: str, tenant: str) -> bool:
        return (
            (not self.state or state == self.state)
            and (not self.name or name == self.name)
            and (self.tenant is None or tenant == self.tenant)
        )


@dataclass(frozen=True)
class Entry:
    state: State
    name: str
    tenant: str
    record: bytes  # the serialized Build, parsed only when listed


class BuildIndex:
    def __init__(self, js: JetStreamContext, kv: KeyValue, bucket: str) -> None:
        self._js = js
        self._kv = kv
        self._stream = f"KV_{bucket}"
        self._ids: list[str] = []  # ascending; ids sort by creation time
        self._entries: dict[str, Entry] = {}
        self._revision = 0  # the newest bucket write applied
        self._ready = asyncio.Event()
        self._moved = asyncio.Event()  # set by each write applied
        self.wake = asyncio.Event()  # set by each write applied; the scheduler clears it
        # Builds per (tenant, state), kept as writes are applied: what the
        # scheduler and the quotas ask for every free slot and submit.
        self._counts: Counter[tuple[str, State]] = Counter()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._follow())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _follow(self) -> None:
        while True:
            try:
                watcher = await self._kv.watchall()
                async for entry in watcher:
                    if entry is None:  # every key's newest value has been seen
                        self._ready.set()
                    else:
                        self._apply(entry)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - NATS away: watch again when it is back
                log.warning("build index: watch lost (%s); watching again", exc)
                await asyncio.sleep(1.0)

    def _apply(self, entry: KeyValue.Entry) -> None:
        self._revision = max(self._revision, int(entry.revision or 0))
        self._moved.set()
        self.wake.set()
        build_id = entry.key
        old = self._entries.get(build_id)
        if old is not None:
            self._counts[old.tenant, old.state] -= 1
        if entry.operation in (KV_DEL, KV_PURGE):
            if self._entries.pop(build_id, None) is not None:
                self._ids.pop(bisect.bisect_left(self._ids, build_id))
            return
        state, name, tenant = wire.build_summary(entry.value or b"")
        if old is None:
            bisect.insort(self._ids, build_id)
        self._entries[build_id] = Entry(state, name, tenant, entry.value or b"")
        self._counts[tenant, state] += 1

    async def caught_up(self) -> bool:
        """Waits until every write made before this call is in the index. A
        watch that is still loading (100,000 records take seconds) is waited
        for while it moves; one that stopped moving (lost with NATS) is
        restarted, and False tells the caller to read the records instead."""
        last = int((await self._js.stream_info(self._stream)).state.last_seq or 0)
        waited = 0.0
        while waited < MAX_CATCH_UP_SECONDS:
            before = self._revision
            try:
                async with asyncio.timeout(CATCH_UP_SECONDS):
                    await self._ready.wait()
                    while self._revision < last:
                        self._moved.clear()
                        await self._moved.wait()
                return True
            except TimeoutError:
                waited += CATCH_UP_SECONDS
                if self._revision == before:
                    break  # no progress at all: the watch is stuck
        log.warning("build index: stuck behind the bucket (%d < %d); watching again",
                    self._revision, last)  # fmt: skip
        await self.stop()
        self._ready.clear()
        self.start()
        return False

    def count(self, tenant: str, state: State) -> int:
        """How many of the tenant's builds are in the state (its quota's measure)."""
        return self._counts[tenant, state]

    def tenants(self, *states: State) -> dict[str, int]:
        """Tenants with builds in any of the states, and how many."""
        found: Counter[str] = Counter()
        for (tenant, state), n in self._counts.items():
            if n > 0 and state in states:
                found[tenant] += n
        return dict(found)

    def page(self, wanted: Wanted, before: str, size: int) -> tuple[list[Build], str]:
        """Up to size builds, newest first, older than before (the page
        token); and the next token ("" on the last page)."""
        end = bisect.bisect_left(self._ids, before) if before else len(self._ids)
        found: list[Build] = []
        for index in range(end - 1, -1, -1):
            entry = self._entries[self._ids[index]]
            if not wanted.matches(entry.state, entry.name, entry.tenant):
                continue
            if len(found) == size:
                return found, found[-1].id
            found.append(wire.build_from_bytes(entry.record))
        return found, ""
