"""Downloading a base image by URL, pinned by its digest: into
CACHE/bases/<sha256>.part, resumed with a Range request after a cut, bounded in
size and time, and renamed to CACHE/bases/<sha256> only once its digests are the
pinned ones. A second build of the same base finds that file and downloads
nothing; a mismatch removes the partial file and caches nothing.

One download of a base at a time on this node (a lock file beside it). A base
may be offered at several URLs (a marketplace entry's locations): they are tried
in order under that one lock, and a URL that fails leaves no partial file for
the next one to resume from, since its bytes may be the wrong ones."""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import logging
import os
import re
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from urllib.parse import urlsplit

from kiln_builder.egress import EgressRefused, Route, parse_url
from kiln_common.digests import file_digests
from kiln_common.errors import FailedPrecondition, InvalidArgument, KilnError, Unavailable
from kiln_common.filelock import file_lock

log = logging.getLogger(__name__)

CHUNK = 1 << 20
ATTEMPTS = 5  # connections per URL: a cut is resumed where it stopped
SPARE_ATTEMPTS = 2  # per URL when another URL is left to try


@dataclass(frozen=True)
class FetchLimits:
    max_bytes: int = 64 << 30  # a base larger than this is refused while downloading
    timeout: float = 3600.0  # seconds for the whole download
    read_timeout: float = 60.0  # seconds without a byte before the connection is retried
    attempts: int = ATTEMPTS  # connections per URL
    opener: urllib.request.OpenerDirector | None = None  # default: _OPENER


@dataclass(frozen=True)
class Base:
    """The base image as fetched: still compressed and uninspected."""

    path: Path
    sha256: str
    source: str  # what the build record and labels name: the URL, artifact:<id>, ...
    downloaded: int  # bytes fetched by this build (0: all from the cache)


@dataclass(frozen=True)
class Pin:
    """The digests the bytes must have: the SHA-256 names the cached file; the
    SHA-512, where one vouches for it (a marketplace entry), is checked too."""

    sha256: str
    sha512: str = ""

    @property
    def key(self) -> str:
        """What names its lock and partial file: the SHA-256, else the SHA-512's head.
        (A SHA-512-only pin, from a release's SHA512SUMS, learns its SHA-256 on
        download; an index file beside the cache maps one to the other.)"""
        return self.sha256 or f"sha512-{self.sha512[:64]}"


class _HttpRedirectsOnly(urllib.request.HTTPRedirectHandler):
    """Follows redirects to http and https URLs only (urllib's own also
    follows them to ftp), each checked against the egress policy, if any,
    before it is requested (the proxy checks the connection again)."""

    def __init__(self, route: Route | None = None) -> None:
        self.route = route

    def redirect_request(  # type: ignore[no-untyped-def]
        self, req, fp, code, msg, headers, newurl
    ) -> urllib.request.Request | None:
        if urlsplit(newurl).scheme not in ("http", "https"):
            raise urllib.error.HTTPError(
                newurl, code, f"redirected to {newurl[:200]}, not an http URL", headers, fp
            )
        if self.route is not None:
            target = parse_url(newurl, "a redirect")
            try:
                self.route.policy.check_addresses_sync(target.host, target.port)
            except EgressRefused as exc:
                raise EgressRefused(f"redirected to {newurl[:200]}: {exc}") from None
        return super().redirect_request(req, fp, code, msg, headers, newurl)


class _ThroughProxy(urllib.request.BaseHandler):
    """Every request through the egress proxy: unlike urllib's ProxyHandler,
    no no_proxy in the builder's environment lets one go around it."""

    handler_order = 100  # before the http(s) handlers, as ProxyHandler's

    def __init__(self, proxy: str) -> None:
        self.hostport = urlsplit(proxy).netloc

    def http_open(self, request: urllib.request.Request) -> None:
        request.set_proxy(self.hostport, "http")  # https: a CONNECT tunnel through it

    https_open = http_open


def http_opener(route: Route | None = None) -> urllib.request.OpenerDirector:
    """urlopen's handlers less ftp:, file: and data:: a base comes over http(s);
    through the egress proxy when there is a route (else the environment's)."""
    opener = urllib.request.OpenerDirector()
    proxy = _ThroughProxy(route.proxy) if route is not None else urllib.request.ProxyHandler()
    for handler in (
        proxy,
        urllib.request.UnknownHandler(),
        urllib.request.HTTPHandler(),
        urllib.request.HTTPSHandler(),
        urllib.request.HTTPDefaultErrorHandler(),
        _HttpRedirectsOnly(route),
        urllib.request.HTTPErrorProcessor(),
    ):
        opener.add_handler(handler)
    return opener


_OPENER = http_opener()
READ_SECONDS = 30.0  # a small file (a Release, a checksum file) answers within this


def read_small(url: str, opener: urllib.request.OpenerDirector, max_bytes: int) -> bytes | None:
    """A small file's bytes (blocking: call it in a thread); None if the
    server has no such file (404, 410). Larger than max_bytes, or slower than
    READ_SECONDS in all (a server trickling bytes), is refused."""
    deadline = time.monotonic() + READ_SECONDS
    try:
        with opener.open(urllib.request.Request(url), timeout=READ_SECONDS) as response:
            data = bytearray()
            while block := response.read1(CHUNK):
                data += block
                if len(data) > max_bytes:
                    raise FailedPrecondition(f"{url} is larger than {max_bytes} bytes")
                if time.monotonic() > deadline:
                    raise Unavailable(f"{url} took longer than {READ_SECONDS:.0f} s to read")
    except urllib.error.HTTPError as exc:
        if exc.code in (404, 410):
            return None
        raise FailedPrecondition(f"{url} answered {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, http.client.HTTPException, OSError) as exc:
        reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
        raise Unavailable(f"cannot read {url}: {reason}") from None
    return bytes(data)


_CONTENT_RANGE = re.compile(r"bytes (\d+)-\d+/(\d+|\*)")


class _Stopped(Exception):
    """The build was cancelled: the download thread ends at its next chunk."""


class BaseDigestMismatch(FailedPrecondition):
    """The bytes are not the ones the recipe or entry pinned."""


class NoGoodLocation(FailedPrecondition):
    """Every URL a base is offered at failed."""


async def fetch_url(
    url: str, pin: Pin, cache: Path, limits: FetchLimits, route: Route | None = None
) -> Base:
    """A from.image.url base: the recipe's URL, pinned by the recipe's SHA-256
    (or its release's checksum file), fetched under the build's egress route
    (its URL and each redirect checked)."""
    cache.mkdir(parents=True, exist_ok=True)
    # Two builds of the same base would otherwise append to one .part file together.
    async with file_lock(cache / f"{pin.key}.lock"):
        try:
            return await _fetch_url(url, pin, cache, limits, route)
        except KilnError as exc:
            raise type(exc)(f"from.image.url: {exc}") from None


async def fetch_first(
    urls: Sequence[str], pin: Pin, cache: Path, limits: FetchLimits, field: str
) -> Base:
    """The base from the first of urls that gives the pinned bytes (the cached
    file, if any, without asking any). Fails naming every URL and why."""
    if not urls:
        raise NoGoodLocation(f"{field}: there is no location to download it from")
    cache.mkdir(parents=True, exist_ok=True)
    failures: list[str] = []
    deadline = time.monotonic() + limits.timeout  # one time limit for all the URLs
    async with file_lock(cache / f"{pin.key}.lock"):
        for number, url in enumerate(urls, 1):
            left = deadline - time.monotonic()
            if left <= 0:
                failures.append(f"({number}) not tried: {limits.timeout:.0f} s were used up")
                continue
            spare = number < len(urls)  # another URL is left: do not insist on this one
            attempts = min(limits.attempts, SPARE_ATTEMPTS) if spare else limits.attempts
            tries = replace(limits, attempts=attempts, timeout=left)
            try:
                return await _fetch_url(url, pin, cache, tries)
            except KilnError as exc:
                (cache / f"{pin.key}.part").unlink(missing_ok=True)
                log.warning("%s: location %d of %d failed: %s", field, number, len(urls), exc)
                failures.append(f"({number}) {exc}")
    raise NoGoodLocation(
        f"{field}: no location gave the image; tried {len(urls)}: " + "; ".join(failures)
    )


async def _fetch_url(
    url: str, pin: Pin, cache: Path, limits: FetchLimits, route: Route | None = None
) -> Base:
    index = cache / f"{pin.key}.sha256"  # a SHA-512 pin's file, once known
    known = pin.sha256 or (index.read_text().strip() if index.is_file() else "")
    final = cache / known if known else None
    if final is not None and final.is_file():
        # Named by its digest and renamed only once verified: no need to read it again.
        os.utime(final)  # the cache's pruning keeps recently used bases
        log.info("base image %s is cached (%s)", known[:12], final)
        return Base(final, known, url, 0)
    if urlsplit(url).scheme not in ("http", "https"):
        raise InvalidArgument(f"{url} is not an http or https URL")
    if route is not None:
        await route.policy.check_url(url)  # before any byte is sent
    partial = cache / f"{pin.key}.part"
    opener = http_opener(route) if route is not None else _OPENER
    fetched = await _stoppable(_download, url, partial, replace(limits, opener=opener))
    wrong, sha256 = await asyncio.to_thread(_mismatch, partial, pin)
    if wrong:
        partial.unlink(missing_ok=True)
        raise BaseDigestMismatch(f"{url} does not have the {wrong}; nothing was cached")
    final = cache / sha256
    os.replace(partial, final)
    if not pin.sha256:
        index.write_text(sha256 + "\n")
    return Base(final, sha256, url, fetched)


async def _stoppable(
    download: Callable[[str, Path, FetchLimits, threading.Event], int],
    url: str, partial: Path, limits: FetchLimits,
) -> int:  # fmt: skip
    """download in a thread; on cancel the thread is told to stop, and waited
    for, so that it never writes the partial file after the lock is released."""
    stop = threading.Event()
    thread = asyncio.ensure_future(asyncio.to_thread(download, url, partial, limits, stop))
    try:
        return await asyncio.shield(thread)
    except asyncio.CancelledError:
        stop.set()
        with contextlib.suppress(Exception):
            await thread  # within a chunk, or the read timeout of a stalled server
        raise


def _mismatch(path: Path, pin: Pin) -> tuple[str, str]:
    """Which pinned digest the file does not have ('' if none), and its
    SHA-256; one read for both."""
    found = file_digests(path, "sha256", *(("sha512",) if pin.sha512 else ()))
    sha256 = found.hexdigest("sha256")
    if pin.sha256 and sha256 != pin.sha256:
        return f"SHA-256 {pin.sha256}", sha256
    if pin.sha512 and found.hexdigest("sha512") != pin.sha512:
        return f"SHA-512 {pin.sha512[:16]}…", sha256
    return "", sha256


def _download(url: str, partial: Path, limits: FetchLimits, stop: threading.Event) -> int:
    """Appends to partial until the server has no more; returns the bytes fetched."""
    deadline = time.monotonic() + limits.timeout
    fetched = 0
    last_error: Exception | None = None
    for attempt in range(limits.attempts):
        if attempt and stop.wait(min(2 ** (attempt - 1), 10)):
            raise _Stopped(url)
        have = partial.stat().st_size if partial.exists() else 0
        try:
            done, count = _one_request(url, partial, have, limits, deadline, stop)
        except EgressRefused:
            raise  # a redirect the policy forbids: no point in asking again
        except (urllib.error.URLError, http.client.HTTPException, OSError) as exc:
            if isinstance(exc, urllib.error.HTTPError) and exc.code != 416 and exc.code < 500:
                raise FailedPrecondition(f"{url} answered {exc.code} {exc.reason}") from None
            last_error = exc
            log.warning("download of %s stopped (%s)", url, exc)
            continue
        fetched += count
        if done:
            return fetched
        log.warning("download of %s stopped after %d bytes", url, have + count)
    raise Unavailable(f"could not download {url}: {last_error or 'cut short every time'}")


def _one_request(
    url: str, partial: Path, have: int, limits: FetchLimits, deadline: float,
    stop: threading.Event,
) -> tuple[bool, int]:  # fmt: skip
    headers = {"Range": f"bytes={have}-"} if have else {}
    request = urllib.request.Request(url, headers=headers)
    try:
        response = (limits.opener or _OPENER).open(request, timeout=limits.read_timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and have:  # nothing beyond what we have: complete
            return True, 0
        raise
    with response:
        if have and response.status != 206:
            have = 0  # the server ignored the range: start again
        elif have and not _continues(response.headers.get("Content-Range", ""), have):
            partial.unlink(missing_ok=True)  # another part than asked for: start again
            log.warning("%s answered a range not starting at %d: starting again", url, have)
            return False, 0
        length = response.length  # None where absent or not a number
        if length is not None and have + length > limits.max_bytes:
            raise InvalidArgument(
                f"{url} is {have + length} bytes, more than the limit of {limits.max_bytes}"
            )
        count = _copy(response.read, partial, have, limits, deadline, url, stop)
        # A connection closed early is not an error to urllib: the length says.
        return length is None or count >= length, count


def _continues(content_range: str, have: int) -> bool:
    found = _CONTENT_RANGE.fullmatch(content_range.strip())
    return found is not None and int(found.group(1)) == have


def _copy(
    read: Callable[[int], bytes], partial: Path, have: int, limits: FetchLimits,
    deadline: float, url: str, stop: threading.Event,
) -> int:  # fmt: skip
    count = 0
    with open(partial, "r+b" if have else "wb") as out:
        out.seek(have)
        out.truncate()
        while block := read(CHUNK):
            if stop.is_set():
                raise _Stopped(url)
            out.write(block)
            count += len(block)
            if have + count > limits.max_bytes:
                out.close()
                partial.unlink(missing_ok=True)
                raise InvalidArgument(f"{url} is larger than the limit of {limits.max_bytes} bytes")
            if time.monotonic() > deadline:
                raise FailedPrecondition(
                    f"{url} took longer than {limits.timeout:.0f} s to download"
                )
    return count
