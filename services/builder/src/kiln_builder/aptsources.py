"""The build host's apt sources, read the way apt reads them, in one place: the
bootstrap's default mirror for a distro and the appliance's mirrors both come
from here. One-line (`deb [opts] URI suite ...`) and deb822 (`URIs: ...`)
styles; comments and other file names (a `.disabled` copy) are skipped, as apt
skips them."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

APT_DIR = Path("/etc/apt")
_URI_RE = re.compile(r"(?:^deb\s+(?:\[[^\]]*\]\s+)?|^URIs:\s*)(\S+)", re.M)


def source_files(apt_dir: Path | None = None) -> list[Path]:
    """The files apt itself reads: sources.list, then sources.list.d/*.list and
    *.sources in name order."""
    where = apt_dir or APT_DIR
    parts = sorted(
        p for p in (where / "sources.list.d").glob("*") if p.suffix in (".list", ".sources")
    )
    return [where / "sources.list", *parts]


def uris(files: Sequence[Path] | None = None) -> list[str]:
    """Every URI the sources name, each once, in the order apt reads them."""
    found: list[str] = []
    for path in source_files() if files is None else files:
        try:
            text = path.read_text()
        except OSError:
            continue
        found += [uri for uri in _URI_RE.findall(text) if uri not in found]
    return found


def archive_uri(archive: str, apt_dir: Path | None = None) -> str | None:
    """The first source whose URI ends in /<archive> (/debian, /debian-security,
    /ubuntu), without a trailing slash; None if there is none."""
    for uri in uris(source_files(apt_dir)):
        if uri.rstrip("/").endswith(f"/{archive}"):
            return uri.rstrip("/")
    return None
