"""A marketplace entry: the facts about one image, as one endorser vouches for
them, and its identifier derived from the image's SHA-1 the way the
StratusLab Marketplace derived it."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from kiln_common.errors import InvalidArgument

SCHEMA = "kiln.market.entry/v1"
DEFAULT_VALIDITY = timedelta(days=180)
STATUSES = ("valid", "expired", "deprecated")

# StratusLab's identifier alphabet: base64url's, most significant digit first.
_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
IDENTIFIER_LENGTH = 27  # ceil(160 bits / 6)
_IDENTIFIER = re.compile(r"^[A-Za-z0-9_-]{27}$")
_TEXT_FIELDS = (
    "artifact_id",
    "format",
    "compression",
    "os",
    "os_version",
    "arch",
    "hypervisor",
    "title",
    "description",
    "creator",
    "created",
    "valid_until",
    "sbom_sha256",
)
# Text fields an entry may leave out: entries signed before they existed
# have none, and their signed bytes (canonical JSON of to_dict) must not change.
_OPTIONAL_TEXT_FIELDS = ("version",)
_HEX = {"md5": 32, "sha1": 40, "sha256": 64, "sha512": 128}


def identifier_for(sha1: str) -> str:
    """The image's identifier: its SHA-1, read as a 160-bit number, written in
    27 base-64 digits (the top digit carries the 2 spare bits), as the
    StratusLab Marketplace named images (its MetadataUtils.sha1ToIdentifier:
    same alphabet, digit count and order), so one image has one name wherever
    it is endorsed."""
    if not re.fullmatch(r"[0-9a-fA-F]{40}", sha1):
        raise InvalidArgument(f"a SHA-1 is 40 hex digits, not {sha1!r}")
    value = int(sha1, 16)
    digits = []
    for _ in range(IDENTIFIER_LENGTH):
        digits.append(_ALPHABET[value & 0x3F])
        value >>= 6
    return "".join(reversed(digits))


def check_identifier(identifier: str) -> str:
    if not _IDENTIFIER.match(identifier):
        raise InvalidArgument(
            f"{identifier!r} is not a marketplace identifier (27 characters of A-Z a-z 0-9 - _)"
        )
    return identifier


def utc(moment: datetime) -> datetime:
    if moment.tzinfo is None:
        raise InvalidArgument("times must carry a time zone")
    return moment.astimezone(UTC)


def stamp(moment: datetime) -> str:
    """RFC 3339 in UTC with microseconds: sorts as text and round-trips."""
    return utc(moment).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_time(text: str) -> datetime:
    try:
        return utc(datetime.fromisoformat(text.replace("Z", "+00:00")))
    except ValueError as exc:
        raise InvalidArgument(f"{text!r} is not an RFC 3339 time") from exc


@dataclass(frozen=True)
class ImageFacts:
    """What an entry says about an image (C builds it from a storage
    artifact and its build record)."""

    artifact_id: str
    size: int
    md5: str
    sha1: str
    sha256: str
    sha512: str
    format: str
    compression: str
    os: str
    os_version: str
    arch: str
    hypervisor: str
    title: str
    description: str
    creator: str
    locations: tuple[str, ...]
    sbom_sha256: str
    version: str = ""  # the image version (the build's kiln-version, e.g. 1.2-7), if known


@dataclass(frozen=True)
class Endorser:
    email: str
    kid: str  # the RFC 7638 thumbprint of the endorser's Ed25519 public key


@dataclass(frozen=True)
class Checksums:
    md5: str
    sha1: str
    sha256: str
    sha512: str


@dataclass(frozen=True)
class Entry:
    """One signed statement. A newer statement about the same image by the
    same endorser (deprecation, expiry, re-endorsement) has a higher
    sequence and supersedes every older one."""

    identifier: str
    sequence: int
    artifact_id: str
    size: int
    checksums: Checksums
    format: str
    compression: str
    os: str
    os_version: str
    arch: str
    hypervisor: str
    title: str
    description: str
    creator: str
    endorser: Endorser
    created: str  # when this statement was signed
    valid_until: str
    deprecated: bool
    expired: bool  # set by the sweep once valid_until has passed
    locations: tuple[str, ...]
    sbom_sha256: str
    schema: str = SCHEMA
    # Optional (None: not in the document, as in entries signed before it existed).
    version: str | None = None

    def status(self, now: datetime | None = None) -> str:
        if self.deprecated:
            return "deprecated"
        moment = utc(now) if now is not None else datetime.now(UTC)
        if self.expired or parse_time(self.valid_until) <= moment:
            return "expired"
        return "valid"

    def successor(self, now: datetime, **changes: Any) -> Entry:
        """The next statement about this image by this endorser."""
        return replace(self, sequence=self.sequence + 1, created=stamp(now), **changes)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["locations"] = list(self.locations)
        for name in _OPTIONAL_TEXT_FIELDS:
            if data[name] is None:
                del data[name]  # absent, not null: an old entry re-canonicalises byte for byte
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Entry:
        """The entry in data, checked field by field (it came from outside)."""
        try:
            if data.get("schema") != SCHEMA:
                raise InvalidArgument(f"unknown entry schema {data.get('schema')!r}")
            fields = dict(data)
            fields["checksums"] = Checksums(**data["checksums"])
            fields["endorser"] = Endorser(**data["endorser"])
            fields["locations"] = tuple(data["locations"])
            entry = cls(**fields)
        except (KeyError, TypeError) as exc:
            raise InvalidArgument(f"not a marketplace entry: {exc}") from exc
        entry.check()
        return entry

    def check(self) -> None:
        """Raises InvalidArgument unless every field has its type and shape."""
        for name, want in (("sequence", int), ("size", int)):
            value = getattr(self, name)
            if type(value) is not want or value < 0:
                raise InvalidArgument(f"entry field {name} must be a non-negative integer")
        for name in ("deprecated", "expired"):
            if type(getattr(self, name)) is not bool:
                raise InvalidArgument(f"entry field {name} must be true or false")
        for name in _TEXT_FIELDS:
            if not isinstance(getattr(self, name), str):
                raise InvalidArgument(f"entry field {name} must be a string")
        for name in _OPTIONAL_TEXT_FIELDS:
            if not isinstance(getattr(self, name), str | None):
                raise InvalidArgument(f"entry field {name} must be a string")
        for name, length in _HEX.items():
            value = getattr(self.checksums, name)
            if not isinstance(value, str) or not re.fullmatch(f"[0-9a-f]{{{length}}}", value):
                raise InvalidArgument(
                    f"entry checksum {name} must be {length} lowercase hex digits"
                )
        if identifier_for(self.checksums.sha1) != self.identifier:
            raise InvalidArgument("the entry's identifier is not derived from its SHA-1")
        if not all(isinstance(x, str) for x in (self.endorser.email, self.endorser.kid)):
            raise InvalidArgument("entry endorser needs an email and a key id")
        if not all(isinstance(x, str) for x in self.locations):
            raise InvalidArgument("entry locations must be URLs")
        parse_time(self.created)
        parse_time(self.valid_until)


def new_entry(facts: ImageFacts, endorser: Endorser, now: datetime, valid_for: timedelta) -> Entry:
    """The first statement by endorser about the image facts describe."""
    if valid_for <= timedelta(0):
        raise InvalidArgument("an entry must be valid for some time")
    entry = Entry(
        identifier=identifier_for(facts.sha1.lower()),
        sequence=1,
        artifact_id=facts.artifact_id,
        size=facts.size,
        checksums=Checksums(
            facts.md5.lower(), facts.sha1.lower(), facts.sha256.lower(), facts.sha512.lower()
        ),
        format=facts.format,
        compression=facts.compression,
        os=facts.os,
        os_version=facts.os_version,
        arch=facts.arch,
        hypervisor=facts.hypervisor,
        title=facts.title,
        description=facts.description,
        creator=facts.creator,
        endorser=endorser,
        created=stamp(now),
        valid_until=stamp(now + valid_for),
        deprecated=False,
        expired=False,
        locations=tuple(facts.locations),
        sbom_sha256=facts.sbom_sha256,
        version=facts.version or None,
    )
    entry.check()
    return entry
