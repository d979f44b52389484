"""Identifiers: time-ordered, URL- and path-safe, and strictly validated."""

from __future__ import annotations

import re
import secrets
import time

from kiln_common.errors import InvalidArgument

_ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"  # Crockford base32, lower case
# \Z, not $: "$" also matches before a final newline, letting "<id>\n" through.
ID_RE = re.compile(r"^[0-9a-hjkmnp-tv-z]{26}\Z")


def new_id() -> str:
    """A ULID-like id: 48 bits of milliseconds then 80 random bits, so ids sort
    by creation time and list pagination can use them as tokens."""
    value = (int(time.time() * 1000) << 80) | secrets.randbits(80)
    chars = []
    for _ in range(26):
        chars.append(_ALPHABET[value & 31])
        value >>= 5
    return "".join(reversed(chars))


def check_id(value: str, what: str = "id") -> str:
    """Rejects anything that is not exactly an id: no path can ride in one."""
    if not ID_RE.fullmatch(value):
        raise InvalidArgument(f"{what} {value[:64]!r} is not a valid Kiln id")
    return value
