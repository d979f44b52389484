"""Where a customised build's base image comes from: a URL pinned by its
SHA-256 (kiln_builder.base.download), an artifact in the storage service, a
marketplace entry (kiln_builder.base.marketplace: verified by the publisher,
downloaded from its locations like a URL) or a Glance image (streamed through
the publisher: kiln_builder.base.published)."""

from __future__ import annotations

import re
from pathlib import Path

from kiln_builder.base import checksums, marketplace, published
from kiln_builder.base.download import Base, FetchLimits, Pin, fetch_url
from kiln_builder.egress import Route
from kiln_builder.layers import prune_oldest
from kiln_builder.storage import StorageAccess
from kiln_common.errors import FailedPrecondition
from kiln_recipe.schema import ImageRef

_SHA256 = re.compile(r"[0-9a-f]{64}")
DEFAULT_LIMITS = FetchLimits()
# The builder service makes a channel base its build's artifact before a bake.
CHANNEL_NEEDS_SERVICE = (
    "from.image.channel names another recipe's channel, which only the builder service"
    " knows: build it with `kiln build`"
)


def prune_bases(cache_dir: Path, max_bytes: int) -> list[Path]:
    """Cached bases beyond max_bytes, least recently used first, are removed
    (a download in progress, a .part, is left alone)."""
    bases = cache_dir / "bases"
    if not bases.is_dir():
        return []
    # Glance bases are kept per tenant (base.published): those count too.
    found = [p for p in bases.glob("*") if _SHA256.fullmatch(p.name)]
    found += [p for p in bases.glob("tenants/*/*") if _SHA256.fullmatch(p.name)]
    return prune_oldest(found, max_bytes)


async def fetch_base(
    ref: ImageRef,
    cache_dir: Path,
    work: Path,
    *,
    storage: StorageAccess | None,
    publisher: str | None = None,
    limits: FetchLimits = DEFAULT_LIMITS,
    route: Route | None = None,
    followed: str = "",
) -> Base:
    """route: the build's egress policy and proxy, for the recipe's own URL.
    The other sources are Kiln's own services, or a marketplace entry's
    locations, which its endorser signed. followed: for a URL that follows
    its release's checksum file, the digest the build's fingerprint read
    there ("sha512:HEX"); read now if not given."""
    if ref.channel is not None:
        raise FailedPrecondition(CHANNEL_NEEDS_SERVICE)
    if ref.url is not None:
        if ref.checksums is not None:
            digest = followed or await checksums.pinned_digest(ref.url, ref.checksums, route)
            pin = checksums.pin_of(digest)
        else:
            assert ref.sha256 is not None  # the schema requires one of the two
            pin = Pin(ref.sha256)
        return await fetch_url(ref.url, pin, cache_dir / "bases", limits, route)
    if ref.artifact is not None:
        return await fetch_artifact(ref.artifact, work, storage)
    if ref.marketplace is not None:
        return await marketplace.fetch_marketplace(
            ref.marketplace, cache_dir / "bases", publisher, limits
        )
    path, sha256, source, fetched = await published.fetch_published(
        ref, cache_dir / "bases", publisher, limits.max_bytes
    )
    return Base(path, sha256, source, fetched)


async def fetch_artifact(artifact_id: str, work: Path, storage: StorageAccess | None) -> Base:
    if storage is None:
        raise FailedPrecondition(
            "from.image.artifact needs the storage service: give the builder its address"
        )
    dest = work / "base.download"
    async with storage.client() as client:
        # get() checks the bytes against the SHA-256 the service recorded.
        artifact = await client.get(artifact_id, dest)
    return Base(dest, artifact.checksums.sha256, f"artifact:{artifact_id}", artifact.size)
