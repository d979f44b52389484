"""A base image that follows its release: the recipe names the image's URL
and the URL of the checksum file its distribution publishes beside it
(SHA256SUMS, SHA512SUMS: `HEX  NAME` lines as sha256sum writes them, `*NAME`
for binary mode, or BSD-style `SHA512 (NAME) = HEX`). The digest listed for
the image's file name, read through the build's egress route, is what the
fingerprint records and what the download is verified against: a release
that moved on is a new base. The checksum file's own signature is not
checked (a future recipe field could name the key); the file comes over
the route the recipe chose, https where the distribution offers it."""

from __future__ import annotations

import asyncio
import re
from pathlib import PurePosixPath
from urllib.parse import unquote, urlsplit

from kiln_builder.base.download import Pin, http_opener, read_small
from kiln_builder.egress import Route
from kiln_common.errors import FailedPrecondition

MAX_SUMS_BYTES = 4 << 20  # a release's checksum file lists its files: kilobytes
_GNU = re.compile(r"([0-9a-fA-F]{64}|[0-9a-fA-F]{128}) [ *]?(.+)")
_BSD = re.compile(r"(SHA256|SHA512) \((.+)\) = ([0-9a-fA-F]{64}|[0-9a-fA-F]{128})")
_ALGORITHMS = {64: "sha256", 128: "sha512"}


def listed(text: str) -> dict[str, str]:
    """File name -> "sha256:HEX" or "sha512:HEX", for every line that parses."""
    found: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if gnu := _GNU.fullmatch(line):
            digest, name = gnu.group(1).lower(), gnu.group(2)
        elif bsd := _BSD.fullmatch(line):
            digest, name = bsd.group(3).lower(), bsd.group(2)
        else:
            continue
        found[name.removeprefix("./")] = f"{_ALGORITHMS[len(digest)]}:{digest}"
    return found


def file_name(url: str) -> str:
    return unquote(PurePosixPath(urlsplit(url).path).name)


async def pinned_digest(image_url: str, sums_url: str, route: Route | None) -> str:
    """The digest the checksum file lists now for the image's file name."""
    field = "from.image.checksums"
    if route is not None:
        await route.policy.check_url(sums_url, field)  # before anything is sent
    data = await asyncio.to_thread(read_small, sums_url, http_opener(route), MAX_SUMS_BYTES)
    if data is None:
        raise FailedPrecondition(f"{field}: {sums_url} is not there (404)")
    name = file_name(image_url)
    digest = listed(data.decode(errors="replace")).get(name)
    if digest is None:
        raise FailedPrecondition(f"{field}: {sums_url} lists no SHA-256 or SHA-512 of {name!r}")
    return digest


def pin_of(digest: str) -> Pin:
    """A Pin from "sha256:HEX" or "sha512:HEX"."""
    algorithm, _, value = digest.partition(":")
    return Pin(value) if algorithm == "sha256" else Pin("", value)
