"""Domain types of the storage core, free of any transport."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

from kiln_common import artifacts
from kiln_common.digests import Digests
from kiln_common.errors import InvalidArgument

ALGORITHMS = ("sha256", "sha512", "sha1", "md5")
_HEX_LEN = {"sha256": 64, "sha512": 128, "sha1": 40, "md5": 32}

LABEL_KEY_RE = re.compile(r"^[a-z0-9]([a-z0-9._-]{0,62})$")
WELL_KNOWN_LABELS = ("name", "version", "format", "build-id")
MAX_LABELS = 64
MAX_LABEL_VALUE = 256
MAX_NAME = 128
TENANT_LABEL = "kiln-tenant"  # an artifact's tenant, as the listing index files it


@dataclass(frozen=True)
class Checksums(artifacts.Checksums):
    """The artifact's checksums (kiln_common.artifacts), as storage checks
    declared ones against what it computed."""

    def given(self) -> dict[str, str]:
        return {k: v for k, v in asdict(self).items() if v}

    def validated(self) -> Checksums:
        """Lower-cases and checks each declared digest is hex of the right length."""
        out = {}
        for alg, value in self.given().items():
            value = value.strip().lower()
            if len(value) != _HEX_LEN[alg] or not re.fullmatch(r"[0-9a-f]+", value):
                raise InvalidArgument(
                    f"checksums.{alg}: expected {_HEX_LEN[alg]} hex digits, got {value[:140]!r}"
                )
            out[alg] = value
        return Checksums(**out)

    def mismatches(self, actual: Checksums) -> list[str]:
        return [
            f"{alg}: declared {want}, got {getattr(actual, alg)}"
            for alg, want in self.given().items()
            if getattr(actual, alg) != want
        ]


class Hashers(Digests):
    """The four digests of an artifact's bytes (kiln_common.digests), as Checksums."""

    def __init__(self) -> None:
        super().__init__(*ALGORITHMS)

    def result(self) -> Checksums:
        return Checksums(**self.hexdigests())


def validate_labels(labels: dict[str, str], field_name: str = "labels") -> dict[str, str]:
    if len(labels) > MAX_LABELS:
        raise InvalidArgument(f"{field_name}: at most {MAX_LABELS} labels, got {len(labels)}")
    for key, value in labels.items():
        if not LABEL_KEY_RE.match(key):
            raise InvalidArgument(
                f"{field_name}: key {key[:80]!r} must be 1-63 of a-z 0-9 . _ - "
                "starting with a letter or digit"
            )
        limit = MAX_NAME if key == "name" else MAX_LABEL_VALUE
        if len(value) > limit:
            raise InvalidArgument(
                f"{field_name}.{key}: at most {limit} characters, got {len(value)}"
            )
        if any(ord(c) < 32 or ord(c) == 127 for c in value):
            raise InvalidArgument(f"{field_name}.{key}: control characters are not allowed")
    return dict(sorted(labels.items()))


@dataclass(frozen=True)
class Artifact:
    id: str
    size: int
    checksums: Checksums
    labels: dict[str, str]
    created_at: datetime
    blob: str  # the object key holding the bytes (shared by identical artifacts)
    tenant: str = ""  # whose it is ("" if stored with identities off)

    def to_record(self) -> dict[str, Any]:
        out = asdict(self)
        out["created_at"] = self.created_at.isoformat()
        return out

    @classmethod
    def from_record(cls, raw: dict[str, Any]) -> Artifact:
        return cls(
            id=raw["id"],
            size=raw["size"],
            checksums=Checksums(**raw["checksums"]),
            labels=raw["labels"],
            created_at=datetime.fromisoformat(raw["created_at"]),
            blob=raw["blob"],
            tenant=raw.get("tenant", ""),
        )

    def public(self) -> dict[str, Any]:
        """What events and clients see: no internal object keys."""
        out = self.to_record()
        del out["blob"]
        return out

    def indexed(self) -> dict[str, str]:
        """The labels the listing index files it under: its own, and its
        tenant as the label kiln-tenant (which no caller can set: kiln-*
        labels are the builder's), so a tenant's listing walks its own index."""
        return self.labels | {TENANT_LABEL: self.tenant} if self.tenant else self.labels

    def matches(self, selector: dict[str, str]) -> bool:
        indexed = self.indexed()
        return all(indexed.get(k) == v for k, v in selector.items())


@dataclass(frozen=True)
class Part:
    number: int
    size: int
    sha256: str = ""


@dataclass(frozen=True)
class UploadSession:
    upload_id: str
    labels: dict[str, str]
    expected: Checksums
    size: int | None
    part_size: int
    blob: str
    backend_upload_id: str
    created_at: datetime
    parts: list[Part] = field(default_factory=list)
    tenant: str = ""  # the uploader's: its artifact's tenant

    def to_record(self) -> dict[str, Any]:
        out = asdict(self)
        out["created_at"] = self.created_at.isoformat()
        del out["parts"]
        return out

    @classmethod
    def from_record(cls, raw: dict[str, Any]) -> UploadSession:
        raw = dict(raw)
        raw["expected"] = Checksums(**raw["expected"])
        raw["created_at"] = datetime.fromisoformat(raw["created_at"])
        return cls(**raw)
