"""Byte counts as a reader takes them in, one way everywhere: the CLI's
transfer lines and the marketplace pages say the same size the same way."""

from __future__ import annotations

_UNITS = ("KiB", "MiB", "GiB", "TiB", "PiB")


def size(count: float) -> str:
    """Binary units, as disk images are sized: 512 B, 1.4 GiB, 12 GiB.
    Takes a float too (a transfer's rate in bytes per second)."""
    if count < 1024:
        return f"{count:.0f} B"
    value = float(count)
    for unit in _UNITS:
        value /= 1024
        if value < 1024 or unit == _UNITS[-1]:
            break
    # One decimal while it says something (1.4 GiB), none once it is noise (123 GiB).
    text = f"{value:.1f}" if value < 10 else f"{value:.0f}"
    return f"{text.removesuffix('.0')} {unit}"
