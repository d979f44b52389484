"""Times as a reader takes them in (2026-12-07 09:41 UTC); the pages keep the
exact value beside them (a <time datetime>). Sizes are kiln_common.humane's,
shared with the CLI."""

from __future__ import annotations

from kiln_market.entry import parse_time


def moment(stamp: str) -> str:
    """An entry's RFC 3339 time to the minute, in UTC: 2026-12-07 09:41 UTC."""
    return parse_time(stamp).strftime("%Y-%m-%d %H:%M UTC")
