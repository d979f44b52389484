"""A search of the marketplace: filters an entry must all match."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from kiln_common.errors import InvalidArgument
from kiln_market.entry import STATUSES, Entry


@dataclass(frozen=True)
class Query:
    """Every given filter must match; text matches any of title,
    description, os, version, arch, creator, endorser, identifier."""

    os: str | None = None
    os_version: str | None = None
    arch: str | None = None
    endorser: str | None = None
    status: str | None = None
    text: str | None = None
    identifier: str | None = None

    def __post_init__(self) -> None:
        if self.status is not None and self.status not in STATUSES:
            raise InvalidArgument(f"status is one of {', '.join(STATUSES)}, not {self.status!r}")

    def matches(self, entry: Entry, now: datetime) -> bool:
        exact = (
            (self.os, entry.os),
            (self.os_version, entry.os_version),
            (self.arch, entry.arch),
            (self.identifier, entry.identifier),
        )
        if any(want is not None and want.lower() != have.lower() for want, have in exact):
            return False
        if self.endorser is not None and self.endorser.lower() != entry.endorser.email.lower():
            return False
        if self.status is not None and entry.status(now) != self.status:
            return False
        if self.text:
            fields = (entry.title, entry.description, entry.os, entry.os_version, entry.arch)
            who = (entry.creator, entry.endorser.email, entry.identifier)
            haystack = " ".join((*fields, *who)).lower()
            return all(word in haystack for word in self.text.lower().split())
        return True
