"""An entry's SBOM: the SPDX document the builder stored beside the image
(kind "sbom", the same build-id label), found through the entry's artifact
and accepted only if its SHA-256 is the one the endorser signed into the
entry (sbom_sha256), so the package list a page shows is the one vouched for."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import parse_qs, urlparse

from kiln_client import AsyncStorageClient
from kiln_common.errors import FailedPrecondition, InvalidArgument, KilnError, NotFound
from kiln_common.retry import RetryPolicy
from kiln_market.entry import Entry

log = logging.getLogger(__name__)

KIND_LABEL = "kiln-kind"  # the builder's label naming what a build's artifact is
BUILD_LABEL = "build-id"
MAX_SBOM = 64 << 20  # an image of 10,000 packages has an SBOM of a few MB
# An entry's page is public and anonymous: it reads, hashes and parses at most
# this much of an SBOM; a larger one is linked for download, not listed.
PAGE_SBOM = 16 << 20
PAGE_CACHE = 32  # package lists kept, by the SBOM's signed SHA-256
# A page does not wait on storage the way a build does (the client's usual
# policy retries for up to a minute): two quick tries, then the page says
# the SBOM is not available right now and shows the rest.
PAGE_WAIT = 4.0  # seconds for all of it, reading included
PAGE_POLICY = RetryPolicy(attempts=2, initial=0.2, maximum=0.5, deadline=PAGE_WAIT)


@dataclass(frozen=True)
class Package:
    name: str
    version: str
    arch: str


@dataclass(frozen=True)
class Listing:
    """What an entry's page shows of its SBOM."""

    state: Literal["listed", "none", "large", "unavailable"]
    packages: tuple[Package, ...] = ()  # when listed, sorted by name
    size: int = 0  # when large: the SBOM's size in bytes


NO_SBOM = Listing("none")
UNAVAILABLE = Listing("unavailable")


# The entry's signed SPDX document, or None when it has none (no SBOM
# signed in, or it is not stored any more).
SbomOf = Callable[[Entry], Awaitable[bytes | None]]


@dataclass(frozen=True)
class _Stored:
    artifact_id: str
    size: int


class StoredSboms:
    """SbomOf over the storage service, as the publisher reads it; and, for
    entries' pages, listing(): the packages, parsed once per SBOM."""

    def __init__(self, storage: AsyncStorageClient) -> None:
        self._storage = storage
        self._quick = storage.with_policy(PAGE_POLICY)
        # An SBOM is named by the SHA-256 the entry signs: its package list
        # never changes, so the pages keep the last few parsed.
        self._listed: OrderedDict[str, Listing] = OrderedDict()
        self._loading: dict[str, asyncio.Task[Listing]] = {}

    async def __call__(self, entry: Entry) -> bytes | None:
        found = await self._find(self._storage, entry)
        if found is None or found.size > MAX_SBOM:
            return None
        return await self._read(self._storage, found.artifact_id, entry.sbom_sha256, MAX_SBOM)

    async def listing(self, entry: Entry) -> Listing:
        """The entry's SBOM as its page lists it. Never raises a Kiln error
        nor waits longer than PAGE_WAIT: a storage service that is away or
        slow makes it UNAVAILABLE. Readers of one SBOM at once share one read."""
        sha256 = entry.sbom_sha256
        if not sha256:
            return NO_SBOM
        if (kept := self._listed.get(sha256)) is not None:
            self._listed.move_to_end(sha256)
            return kept
        task = self._loading.get(sha256)
        if task is None:
            task = asyncio.create_task(self._load(entry))
            self._loading[sha256] = task
            task.add_done_callback(lambda _: self._loading.pop(sha256, None))
        # Shielded: a reader who goes away does not cancel the others' read.
        listing = await asyncio.shield(task)
        if listing.state in ("listed", "large"):  # facts of the bytes, kept
            self._listed[sha256] = listing
            self._listed.move_to_end(sha256)
            while len(self._listed) > PAGE_CACHE:
                self._listed.popitem(last=False)
        return listing

    async def _load(self, entry: Entry) -> Listing:
        try:
            async with asyncio.timeout(PAGE_WAIT):
                found = await self._find(self._quick, entry)
                if found is None:
                    return NO_SBOM
                if found.size > PAGE_SBOM:
                    return Listing("large", size=found.size)
                document = await self._read(
                    self._quick, found.artifact_id, entry.sbom_sha256, PAGE_SBOM
                )
        except (KilnError, TimeoutError) as exc:
            log.warning("the SBOM of entry %s is not listed: %s", entry.identifier, exc or "slow")
            return UNAVAILABLE
        # Parsing megabytes of JSON off the event loop the gRPC server shares.
        return Listing("listed", tuple(await asyncio.to_thread(packages, document)))

    async def _find(self, storage: AsyncStorageClient, entry: Entry) -> _Stored | None:
        if not entry.sbom_sha256:
            return None
        try:
            image = await storage.stat(entry.artifact_id)
        except (NotFound, InvalidArgument):  # gone, or an id not of this storage service
            return None
        build = image.labels.get(BUILD_LABEL)
        if not build:
            return None
        async for found in storage.list({BUILD_LABEL: build, KIND_LABEL: "sbom"}):
            if found.checksums.sha256 == entry.sbom_sha256:
                return _Stored(found.id, found.size)
        return None

    async def _read(
        self, storage: AsyncStorageClient, artifact_id: str, sha256: str, limit: int
    ) -> bytes:
        data = bytearray()
        digest = hashlib.sha256()  # as it comes: no second pass over megabytes
        async for chunk in storage.stream(artifact_id):
            data += chunk
            digest.update(chunk)
            if len(data) > limit:
                raise FailedPrecondition(f"SBOM {artifact_id} is larger than {limit} bytes")
        if digest.hexdigest() != sha256:
            # Stored bytes that are not the signed ones: show nothing rather than them.
            raise FailedPrecondition(f"SBOM {artifact_id} does not match the entry's sbom_sha256")
        return bytes(data)


def packages(document: bytes) -> list[Package]:
    """The packages an SPDX 2.3 JSON document lists, the image itself left
    out, sorted by name; a document that is not SPDX JSON lists none."""
    try:
        spdx = json.loads(document)
    except ValueError:
        return []
    listed = spdx.get("packages") if isinstance(spdx, dict) else None
    if not isinstance(listed, list):
        return []
    found = [_package(p) for p in listed if isinstance(p, dict) and _is_component(p)]
    return sorted(found, key=lambda p: (p.name, p.arch, p.version))


def _is_component(package: dict[str, Any]) -> bool:
    return package.get("primaryPackagePurpose") != "OPERATING-SYSTEM"


def _package(package: dict[str, Any]) -> Package:
    return Package(_text(package.get("name")), _text(package.get("versionInfo")), _arch(package))


def _arch(package: dict[str, Any]) -> str:
    """The architecture from the package's purl (pkg:deb/debian/bash@5.2?arch=amd64)."""
    refs = package.get("externalRefs")
    for ref in refs if isinstance(refs, list) else []:
        if isinstance(ref, dict) and ref.get("referenceType") == "purl":
            query = parse_qs(urlparse(_text(ref.get("referenceLocator"))).query)
            return query.get("arch", [""])[0]
    return ""


def _text(value: object) -> str:
    return value if isinstance(value, str) else ""
