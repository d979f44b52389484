"""Publications: what was asked, and per artifact and target what came of it.
Kept as JSON in a NATS KV bucket, so any publisher replica answers."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from kiln_common.ids import check_id

PENDING, RUNNING, DONE, FAILED = "pending", "running", "done", "failed"


def now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class Result:
    """One target's outcome for one artifact."""

    artifact_id: str
    kind: str  # glance | marketplace
    target: str  # cloud[/region] or endorser
    state: str = PENDING
    error: str = ""
    cloud: str = ""
    region: str = ""
    image_id: str = ""
    image_name: str = ""
    method: str = ""
    retired: tuple[str, ...] = ()
    entry_identifier: str = ""

    @property
    def key(self) -> str:
        return f"{self.artifact_id}:{self.kind}:{self.target}"


@dataclass(frozen=True)
class Publication:
    id: str
    artifact_id: str
    build_id: str
    results: tuple[Result, ...] = ()
    created_at: str = field(default_factory=lambda: now().isoformat())
    updated_at: str = field(default_factory=lambda: now().isoformat())

    @property
    def state(self) -> str:
        states = {r.state for r in self.results}
        if FAILED in states:
            return FAILED
        if states <= {DONE} and self.results:
            return DONE
        return RUNNING if states & {RUNNING, DONE} else PENDING

    def with_result(self, result: Result) -> Publication:
        kept = [r for r in self.results if r.key != result.key]
        ordered = (
            tuple(result if r.key == result.key else r for r in self.results)
            if len(kept) < len(self.results)
            else (*self.results, result)
        )
        return replace(self, results=ordered, updated_at=now().isoformat())

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> Publication:
        data: dict[str, Any] = json.loads(raw)
        results = tuple(
            Result(**{**r, "retired": tuple(r.get("retired", ()))}) for r in data.pop("results")
        )
        return cls(**data, results=results)


def record_key(publication_id: str) -> str:
    """The KV key of a publication: its id, checked, since KV keys take a
    restricted alphabet (ids are Kiln ids; automatic ones "auto-<build id>")."""
    check_id(publication_id.removeprefix("auto-"), "publication id")
    return publication_id
