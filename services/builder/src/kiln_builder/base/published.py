"""Glance bases, streamed through the publisher service from Glance. The
bytes are checked here against the digest the publisher announces first
(Glance's os_hash_value), and cached like url bases: CACHE/bases/<sha256>,
renamed into place only once verified, so a second build downloads nothing.
(Marketplace bases only ask the publisher for the verified entry:
kiln_builder.base.marketplace.)"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
from pathlib import Path

from kiln_client import AsyncPublisherClient
from kiln_client.credentials import acting_tenant
from kiln_common.digests import Digests
from kiln_common.errors import FailedPrecondition
from kiln_common.filelock import file_lock
from kiln_recipe.schema import ImageRef

log = logging.getLogger(__name__)


class PublishedBaseMismatch(FailedPrecondition):
    """The bytes are not the ones Glance vouches for."""


def describe(ref: ImageRef) -> str:
    assert ref.glance is not None
    return f"glance:{ref.glance.cloud}/{ref.glance.id}"


def need_publisher(source: str, publisher: str | None) -> str:
    if not publisher:
        raise FailedPrecondition(
            f"from.image: {source.split(':')[0]} bases need the publisher service:"
            " give the builder its address (KILN_BUILDER_PUBLISHER)"
        )
    return publisher


def _source_key(source: str) -> str:
    """A file-name-safe key for a source such as glance:CLOUD/ID."""
    return hashlib.sha256(source.encode()).hexdigest()[:32]


def _index(cache: Path, source: str) -> Path:
    """Glance image data never changes once active: the source's digest, once
    known, names the cached file."""
    return cache / f"source-{_source_key(source)}.sha256"


def cached(cache: Path, source: str) -> Path | None:
    index = _index(cache, source)
    if not index.is_file():
        return None
    final = cache / index.read_text().strip()
    if not final.is_file():
        return None
    os.utime(final)  # the cache's pruning keeps recently used bases
    return final


async def fetch_published(
    ref: ImageRef, cache: Path, publisher: str | None, max_bytes: int
) -> tuple[Path, str, str, int]:
    """(path, sha256, source, bytes downloaded) of the base."""
    source = describe(ref)
    publisher = need_publisher(source, publisher)
    if tenant := acting_tenant():
        # Another tenant may not be allowed this cloud: its copy is not this one's.
        cache = cache / "tenants" / tenant
    cache.mkdir(parents=True, exist_ok=True)
    key = _source_key(source)
    async with file_lock(cache / f"source-{key}.lock"):
        found = cached(cache, source)
        if found is not None:
            log.info("base image %s is cached (%s)", source, found)
            return found, found.name, source, 0
        return await _download(ref, cache, publisher, source, max_bytes)


async def _download(
    ref: ImageRef, cache: Path, publisher: str, source: str, max_bytes: int
) -> tuple[Path, str, str, int]:
    partial = cache / f"source-{_source_key(source)}.part"
    found = Digests("sha256", "sha512")
    async with AsyncPublisherClient(publisher) as client:
        assert ref.glance is not None
        header, chunks = await client.fetch_base(ref.glance.cloud, ref.glance.id)
        if header.size > max_bytes:
            raise FailedPrecondition(f"{source}: {header.size} bytes is more than {max_bytes}")
        out = await asyncio.to_thread(partial.open, "wb")
        try:
            async for data in chunks:
                found.update(data)
                if found.size > max_bytes:
                    raise FailedPrecondition(f"{source}: more than {max_bytes} bytes")
                await asyncio.to_thread(out.write, data)
        finally:
            out.close()
    digest, size = found.hexdigest("sha256"), found.size
    wrong = (
        size != header.size
        or found.hexdigest("sha512") != header.sha512
        or (header.sha256 and digest != header.sha256)
    )
    if wrong:
        partial.unlink(missing_ok=True)
        raise PublishedBaseMismatch(
            f"from.image {source}: the bytes received do not match the digest "
            "Glance vouches for (size, SHA-512); nothing was cached"
        )
    final = cache / digest
    os.replace(partial, final)
    _index(cache, source).write_text(digest + "\n")
    return final, digest, source, size
