"""Sizes and times as a reader takes them in (1.4 GiB, 2026-12-07 09:41 UTC);
the pages keep the exact value beside them (a title, a <time datetime>)."""

from __future__ import annotations

from kiln_market.entry import parse_time

_UNITS = ("KiB", "MiB", "GiB", "TiB", "PiB")


def size(count: int) -> str:
    """Binary units, as disk images are sized: 1.4 GiB, 12 GiB, 512 B."""
    if count < 1024:
        return f"{count} B"
    value = float(count)
    for unit in _UNITS:
        value /= 1024
        if value < 1024 or unit == _UNITS[-1]:
            break
    # One decimal while it says something (1.4 GiB), none once it is noise (123 GiB).
    text = f"{value:.1f}" if value < 10 else f"{value:.0f}"
    return f"{text.removesuffix('.0')} {unit}"


def moment(stamp: str) -> str:
    """An entry's RFC 3339 time to the minute, in UTC: 2026-12-07 09:41 UTC."""
    return parse_time(stamp).strftime("%Y-%m-%d %H:%M UTC")
