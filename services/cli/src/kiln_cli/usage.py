"""What the CLI's verbs share of their arguments: the usage error (exit 2) and
durations such as 90s, 15m, 1h or 30d."""

from __future__ import annotations

import re

_DURATION = re.compile(r"([0-9]{1,9})([smhd]?)")  # ASCII digits: isdigit() takes "²"
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


class UsageError(Exception):
    """Printed as it is; exit status 2."""


def parse_duration(text: str) -> int:
    """Seconds."""
    found = _DURATION.fullmatch(text)
    if found is None:
        raise UsageError(f"{text!r} is not a duration like 90s, 15m, 1h or 7d")
    return int(found.group(1)) * _UNITS[found.group(2)]
