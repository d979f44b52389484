"""Durations as people write them: 90s, 15m, 1h or 30d (a bare number: seconds)."""

from __future__ import annotations

import re

from kiln_common.errors import InvalidArgument

_DURATION = re.compile(r"([0-9]{1,9})([smhd]?)")  # ASCII digits: isdigit() takes "²"
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_seconds(text: str) -> int:
    found = _DURATION.fullmatch(text)
    if found is None:
        raise InvalidArgument(f"{text!r} is not a duration like 90s, 15m, 1h or 7d")
    return int(found.group(1)) * _UNITS[found.group(2)]


def describe(seconds: int) -> str:
    """Seconds written back the way people write them: 90s, 15m, 1h30m, 2d."""
    if seconds <= 0:
        return "0s"
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        count, seconds = divmod(seconds, size)
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts[:2])  # the two largest units say enough
