"""Where a customised build's base image comes from: a URL pinned by its
SHA-256, an artifact in the storage service, or (through the publisher) a
marketplace entry or a Glance image (kiln_builder.base.published).

A URL is downloaded once: into CACHE/bases/<sha256>.part, resumed with a Range
request after a cut, bounded in size and time, and renamed to CACHE/bases/<sha256>
only once its digest is the pinned one. A second build of the same base finds that
file and downloads nothing; a mismatch removes the partial file and caches nothing.
"""

from __future__ import annotations

import asyncio
import hashlib
import http.client
import logging
import os
import re
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from kiln_builder.base import published
from kiln_builder.layers import prune_oldest
from kiln_builder.resources import file_lock
from kiln_builder.storage import storage_client
from kiln_common.errors import FailedPrecondition, InvalidArgument, Unavailable
from kiln_recipe.schema import ImageRef

log = logging.getLogger(__name__)

CHUNK = 1 << 20
_SHA256 = re.compile(r"[0-9a-f]{64}")
ATTEMPTS = 5  # connections per download: a cut is resumed where it stopped


@dataclass(frozen=True)
class FetchLimits:
    max_bytes: int = 64 << 30  # a base larger than this is refused while downloading
    timeout: float = 3600.0  # seconds for the whole download
    read_timeout: float = 60.0  # seconds without a byte before the connection is retried


@dataclass(frozen=True)
class Base:
    """The base image as fetched: still compressed and uninspected."""

    path: Path
    sha256: str
    source: str  # what the build record and labels name: the URL or artifact:<id>
    downloaded: int  # bytes fetched by this build (0: all from the cache)


class BaseDigestMismatch(FailedPrecondition):
    """The bytes are not the ones the recipe pinned."""


def prune_bases(cache_dir: Path, max_bytes: int) -> list[Path]:
    """Cached bases beyond max_bytes, least recently used first, are removed
    (a download in progress, a .part, is left alone)."""
    bases = cache_dir / "bases"
    if not bases.is_dir():
        return []
    return prune_oldest([p for p in bases.iterdir() if _SHA256.fullmatch(p.name)], max_bytes)


def _verified(path: Path, expected: str) -> bool:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(CHUNK):
            digest.update(block)
    return digest.hexdigest() == expected


async def fetch_base(
    ref: ImageRef,
    cache_dir: Path,
    work: Path,
    *,
    storage: str | None,
    publisher: str | None = None,
    limits: FetchLimits = FetchLimits(),
) -> Base:
    if ref.url is not None:
        assert ref.sha256 is not None  # the schema requires the pin
        return await fetch_url(ref.url, ref.sha256, cache_dir / "bases", limits)
    if ref.artifact is not None:
        return await fetch_artifact(ref.artifact, work, storage)
    path, sha256, source, fetched = await published.fetch_published(
        ref, cache_dir / "bases", publisher, limits.max_bytes
    )
    return Base(path, sha256, source, fetched)


async def fetch_artifact(artifact_id: str, work: Path, storage: str | None) -> Base:
    if storage is None:
        raise FailedPrecondition(
            "from.image.artifact needs the storage service: give the builder its address"
        )
    dest = work / "base.download"
    async with storage_client(storage) as client:
        # get() checks the bytes against the SHA-256 the service recorded.
        artifact = await client.get(artifact_id, dest)
    return Base(dest, artifact.checksums.sha256, f"artifact:{artifact_id}", artifact.size)


async def fetch_url(url: str, sha256: str, cache: Path, limits: FetchLimits) -> Base:
    cache.mkdir(parents=True, exist_ok=True)
    # One download of a base at a time on this node: two builds of the same base
    # would otherwise append to one .part file together.
    async with file_lock(cache / f"{sha256}.lock"):
        return await _fetch_url(url, sha256, cache, limits)


async def _fetch_url(url: str, sha256: str, cache: Path, limits: FetchLimits) -> Base:
    final = cache / sha256
    if final.is_file():
        # Named by its digest and renamed only once verified: no need to read it again.
        os.utime(final)  # the cache's pruning keeps recently used bases
        log.info("base image %s is cached (%s)", sha256[:12], final)
        return Base(final, sha256, url, 0)
    partial = cache / f"{sha256}.part"
    fetched = await asyncio.to_thread(_download, url, partial, limits)
    if not await asyncio.to_thread(_verified, partial, sha256):
        partial.unlink(missing_ok=True)
        raise BaseDigestMismatch(
            f"from.image.url: {url} does not have the SHA-256 the recipe pins ({sha256});"
            " nothing was cached"
        )
    os.replace(partial, final)
    return Base(final, sha256, url, fetched)


def _download(url: str, partial: Path, limits: FetchLimits) -> int:
    """Appends to partial until the server has no more; returns the bytes fetched."""
    deadline = time.monotonic() + limits.timeout
    fetched = 0
    last_error: Exception | None = None
    for attempt in range(ATTEMPTS):
        have = partial.stat().st_size if partial.exists() else 0
        try:
            done, count = _one_request(url, partial, have, limits, deadline)
        except (urllib.error.URLError, http.client.HTTPException, OSError) as exc:
            if isinstance(exc, urllib.error.HTTPError) and exc.code != 416 and exc.code < 500:
                raise FailedPrecondition(
                    f"from.image.url: {url} answered {exc.code} {exc.reason}"
                ) from None
            last_error = exc
            log.warning("download of %s stopped (%s); resuming", url, exc)
            time.sleep(min(2**attempt, 10))
            continue
        fetched += count
        if done:
            return fetched
        log.warning("download of %s stopped after %d bytes; resuming", url, have + count)
    raise Unavailable(f"from.image.url: could not download {url}: {last_error}")


def _one_request(
    url: str, partial: Path, have: int, limits: FetchLimits, deadline: float
) -> tuple[bool, int]:
    headers = {"Range": f"bytes={have}-"} if have else {}
    request = urllib.request.Request(url, headers=headers)
    try:
        response = urllib.request.urlopen(request, timeout=limits.read_timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and have:  # nothing beyond what we have: complete
            return True, 0
        raise
    with response:
        if have and response.status != 206:
            have = 0  # the server ignored the range: start again
        length = response.headers.get("Content-Length")
        if length is not None and have + int(length) > limits.max_bytes:
            raise InvalidArgument(
                f"from.image.url: {url} is {have + int(length)} bytes,"
                f" more than the limit of {limits.max_bytes}"
            )
        count = _copy(response.read, partial, have, limits, deadline, url)
        # A connection closed early is not an error to urllib: the length says.
        return length is None or count >= int(length), count


def _copy(
    read: Callable[[int], bytes], partial: Path, have: int, limits: FetchLimits,
    deadline: float, url: str,
) -> int:  # fmt: skip
    count = 0
    with open(partial, "r+b" if have else "wb") as out:
        out.seek(have)
        out.truncate()
        while block := read(CHUNK):
            out.write(block)
            count += len(block)
            if have + count > limits.max_bytes:
                out.close()
                partial.unlink(missing_ok=True)
                raise InvalidArgument(
                    f"from.image.url: {url} is larger than the limit of {limits.max_bytes} bytes"
                )
            if time.monotonic() > deadline:
                raise FailedPrecondition(
                    f"from.image.url: {url} took longer than {limits.timeout:.0f} s to download"
                )
    return count
