"""What the CLI's verbs share of their arguments: the usage error (exit 2) and
durations such as 90s, 15m, 1h or 30d."""

from __future__ import annotations

from kiln_common.durations import parse_seconds
from kiln_common.errors import InvalidArgument


class UsageError(Exception):
    """Printed as it is; exit status 2."""


def parse_duration(text: str) -> int:
    """Seconds."""
    try:
        return parse_seconds(text)
    except InvalidArgument as exc:
        raise UsageError(str(exc)) from None
