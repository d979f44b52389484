"""High-water marks of the marketplace: per entry key, the newest statement
ever written (and whether it deprecated the image), so a document rolled back
inside NATS to an older, validly signed one is refused; and what a new
statement supersedes."""

from __future__ import annotations

import json
from dataclasses import dataclass

from kiln_market.signing import SignedEntry


@dataclass(frozen=True)
class Mark:
    """The newest statement ever written for one entry key."""

    sequence: int
    deprecated: bool

    def encode(self) -> bytes:
        return json.dumps({"sequence": self.sequence, "deprecated": self.deprecated}).encode()

    @classmethod
    def decode(cls, value: bytes | None) -> Mark:
        try:
            data = json.loads(value or b"{}")
            sequence, deprecated = data["sequence"], data["deprecated"]
        except (ValueError, KeyError, TypeError):
            return cls(0, False)  # unreadable: the documents' own checks still apply
        if type(sequence) is not int or type(deprecated) is not bool:
            return cls(0, False)
        return cls(sequence, deprecated)


@dataclass(frozen=True)
class Head:
    """What a new statement about a key supersedes: the newest sequence known
    (stored document or high-water mark), the stored revision, the stored
    entry if it is trusted, and whether the newest statement deprecated it."""

    sequence: int
    revision: int | None  # None: nothing stored under the key now
    current: SignedEntry | None
    deprecated: bool
