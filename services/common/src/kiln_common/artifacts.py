"""A stored artifact as its users see it (the storage client hands these out):
its id, size, checksums, labels and when it was stored. Plain dataclasses;
kiln_client.wire reads them from the Storage API's messages."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

# A build's image version (1.2-7) on every artifact of it: the builder writes
# it, the publisher puts it in Glance properties and marketplace entries.
VERSION_LABEL = "kiln-version"


@dataclass(frozen=True)
class Checksums:
    sha256: str = ""
    sha512: str = ""
    sha1: str = ""
    md5: str = ""


@dataclass(frozen=True)
class Artifact:
    id: str = ""
    size: int = 0
    checksums: Checksums = field(default_factory=Checksums)
    # Well-known keys: name, version, format, build-id, kiln-version; any other key is free.
    labels: dict[str, str] = field(default_factory=dict)
    created_at: datetime | None = None
    tenant: str = ""  # whose artifact it is ("" with identities off)
