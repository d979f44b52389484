"""What an entry's page shows of its SBOM, read through StoredSboms: parsed
once per signed SHA-256 (one read for readers at once, none for readers
after), a large one not read at all, and a storage service that is away or
hangs answered quickly as "not available right now". The storage here is a
stand-in that counts reads; the real one is in test_market_browser."""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from market_support import ENDORSER, endorser_ring, facts_for

from kiln_common.errors import Unavailable
from kiln_market import Endorser, Entry, new_entry
from kiln_publisher.market import sbom
from kiln_publisher.market.sbom import PAGE_CACHE, PAGE_SBOM, StoredSboms

DOCUMENT = json.dumps({"spdxVersion": "SPDX-2.3", "packages": [{"name": "bash"}]}).encode()


class Storage:
    """Stat, list and stream as the storage client answers them, for one
    image and its SBOM; each stream counted."""

    def __init__(self, document: bytes = DOCUMENT, size: int | None = None) -> None:
        self.document = document
        self.size = len(document) if size is None else size
        self.reads = 0
        self.hang = False
        self.away = False

    def with_policy(self, policy: Any) -> Storage:
        return self

    async def stat(self, artifact_id: str) -> Any:
        if self.away:
            raise Unavailable("storage unavailable")
        if self.hang:
            await asyncio.Event().wait()
        return SimpleNamespace(labels={"build-id": "b1"})

    async def list(self, labels: dict[str, str]) -> AsyncIterator[Any]:
        sha256 = hashlib.sha256(self.document).hexdigest()
        yield SimpleNamespace(id="sbom1", size=self.size, checksums=SimpleNamespace(sha256=sha256))

    async def stream(self, artifact_id: str) -> AsyncIterator[bytes]:
        self.reads += 1
        await asyncio.sleep(0.01)  # readers at once overlap
        yield self.document


def entry_for(tmp_path: Path, document: bytes = DOCUMENT) -> Entry:
    signer = endorser_ring(tmp_path).signer(ENDORSER)
    now = datetime.now(UTC)
    entry = new_entry(facts_for(b"image"), Endorser(signer.email, signer.kid), now, timedelta(1))
    return replace(entry, sbom_sha256=hashlib.sha256(document).hexdigest())


async def test_an_sbom_is_read_and_parsed_once_for_every_reader(tmp_path: Path) -> None:
    storage = Storage()
    sboms = StoredSboms(storage)  # type: ignore[arg-type]
    entry = entry_for(tmp_path)
    at_once = await asyncio.gather(*(sboms.listing(entry) for _ in range(5)))
    later = await sboms.listing(entry)
    assert storage.reads == 1
    assert {listing.state for listing in [*at_once, later]} == {"listed"}
    assert [p.name for p in later.packages] == ["bash"]


async def test_the_cache_keeps_the_last_few_read_and_no_misses(tmp_path: Path) -> None:
    storage = Storage()
    sboms = StoredSboms(storage)  # type: ignore[arg-type]
    entry = entry_for(tmp_path)
    await sboms.listing(entry)
    for i in range(PAGE_CACHE):  # SBOMs storage does not hold: misses, not kept
        await sboms.listing(replace(entry, sbom_sha256=f"{i:064x}"))
    await sboms.listing(entry)
    assert storage.reads == 1
    for i in range(PAGE_CACHE):  # as many others read: the first is the oldest, and goes
        storage.document = DOCUMENT + b" " * (i + 1)
        await sboms.listing(
            replace(entry, sbom_sha256=hashlib.sha256(storage.document).hexdigest())
        )
    assert storage.reads == 1 + PAGE_CACHE
    storage.document = DOCUMENT
    await sboms.listing(entry)
    assert storage.reads == 2 + PAGE_CACHE and len(sboms._listed) == PAGE_CACHE


async def test_a_large_sbom_is_linked_not_read(tmp_path: Path) -> None:
    storage = Storage(size=PAGE_SBOM + 1)
    listing = await StoredSboms(storage).listing(entry_for(tmp_path))  # type: ignore[arg-type]
    assert (listing.state, listing.size, storage.reads) == ("large", PAGE_SBOM + 1, 0)


async def test_storage_away_or_hanging_is_not_available_right_now(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sbom, "PAGE_WAIT", 0.2)
    entry = entry_for(tmp_path)
    away, hanging = Storage(), Storage()
    away.away, hanging.hang = True, True
    start = time.monotonic()
    assert (await StoredSboms(away).listing(entry)).state == "unavailable"  # type: ignore[arg-type]
    assert (await StoredSboms(hanging).listing(entry)).state == "unavailable"  # type: ignore[arg-type]
    assert time.monotonic() - start < 2
    sboms = StoredSboms(away)  # type: ignore[arg-type]
    await sboms.listing(entry)
    away.away = False
    assert (await sboms.listing(entry)).state == "listed"  # not kept: read again when back
