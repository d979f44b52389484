"""An entry's SBOM: the SPDX document the builder stored beside the image
(kind "sbom", the same build-id label), found through the entry's artifact
and accepted only if its SHA-256 is the one the endorser signed into the
entry (sbom_sha256), so the package list a page shows is the one vouched for."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlparse

from kiln_client import AsyncStorageClient
from kiln_common.errors import FailedPrecondition, InvalidArgument, NotFound
from kiln_market.entry import Entry

KIND_LABEL = "kiln-kind"  # the builder's label naming what a build's artifact is
BUILD_LABEL = "build-id"
MAX_SBOM = 64 << 20  # an image of 10,000 packages has an SBOM of a few MB


@dataclass(frozen=True)
class Package:
    name: str
    version: str
    arch: str


# The entry's signed SPDX document, or None when it has none (no SBOM
# signed in, or it is not stored any more).
SbomOf = Callable[[Entry], Awaitable[bytes | None]]


class StoredSboms:
    """SbomOf over the storage service, as the publisher reads it."""

    def __init__(self, storage: AsyncStorageClient) -> None:
        self._storage = storage

    async def __call__(self, entry: Entry) -> bytes | None:
        if not entry.sbom_sha256:
            return None
        try:
            image = await self._storage.stat(entry.artifact_id)
        except (NotFound, InvalidArgument):  # gone, or an id not of this storage service
            return None
        build = image.labels.get(BUILD_LABEL)
        if not build:
            return None
        async for found in self._storage.list({BUILD_LABEL: build, KIND_LABEL: "sbom"}):
            if found.checksums.sha256 == entry.sbom_sha256 and found.size <= MAX_SBOM:
                return await self._read(found.id, entry.sbom_sha256)
        return None

    async def _read(self, artifact_id: str, sha256: str) -> bytes:
        data = bytearray()
        async for chunk in self._storage.stream(artifact_id):
            data += chunk
            if len(data) > MAX_SBOM:
                raise FailedPrecondition(f"SBOM {artifact_id} is larger than {MAX_SBOM} bytes")
        if hashlib.sha256(data).hexdigest() != sha256:
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
