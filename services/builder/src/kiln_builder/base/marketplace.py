"""Marketplace bases. The publisher hands over the entry only once it has
verified it (signature, a known endorser, not older than the newest statement
about the image); here it must also be valid (neither expired nor deprecated).
The image is then downloaded like a url base, from the entry's locations in
order, then from the fresh URL the publisher's storage signed for it (the
URLs signed into an entry expire before the entry does), pinned by the
entry's SHA-256 and SHA-512: a location that is down, answers an error or
serves other bytes is passed over for the next one.

Every build asks for the entry first, a build whose base is cached too: a
deprecated, expired or revoked entry stops every build that names it, and a
cached file is used only if it is the one the entry names (cached by its
SHA-256, CACHE/bases/<sha256>)."""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

from kiln_builder.base.download import Base, FetchLimits, Pin, fetch_first
from kiln_builder.base.published import need_publisher
from kiln_client import AsyncPublisherClient
from kiln_common.errors import FailedPrecondition
from kiln_common.publications import Entry

log = logging.getLogger(__name__)


async def fetch_marketplace(
    identifier: str, cache: Path, publisher: str | None, limits: FetchLimits
) -> Base:
    source = f"marketplace:{identifier}"
    field = f"from.image.marketplace {identifier}"
    entry = await valid_entry(identifier, need_publisher(source, publisher))
    if entry.size > limits.max_bytes:
        raise FailedPrecondition(
            f"{field}: the image is {entry.size} bytes, more than the limit of {limits.max_bytes}"
        )
    # No location may serve more than the entry says the image is.
    bounded = replace(limits, max_bytes=entry.size)
    pin = Pin(entry.sha256, entry.sha512)
    urls = list(entry.locations)
    if entry.fresh_location and entry.fresh_location not in urls:
        urls.append(entry.fresh_location)  # signed now: the entry's may have expired
    base = await fetch_first(urls, pin, cache, bounded, field)
    if base.downloaded:
        log.info("base image %s downloaded from %s", source, base.source)
    return replace(base, source=source)


async def valid_entry(identifier: str, publisher: str) -> Entry:
    async with AsyncPublisherClient(publisher) as client:
        entry = await client.entry(identifier)  # verified by the publisher
    if entry.status != "valid":
        raise FailedPrecondition(f"marketplace entry {identifier} is {entry.status}")
    if not entry.sha256:
        raise FailedPrecondition(f"marketplace entry {identifier} names no SHA-256 of its image")
    return entry
