"""Publications as the publisher keeps them: JSON in a NATS KV bucket, so any
publisher replica answers. The model is kiln_common.publications'; a stored
state is its name in lower case (as records written before it say it)."""

from __future__ import annotations

import json
from dataclasses import asdict
from datetime import datetime
from typing import Any

from kiln_common.ids import check_id
from kiln_common.publications import Publication, PublicationState, TargetResult

Result = TargetResult  # one target's outcome for one artifact
PENDING, RUNNING = PublicationState.PENDING, PublicationState.RUNNING
DONE, FAILED = PublicationState.DONE, PublicationState.FAILED


def record_bytes(publication: Publication) -> bytes:
    data = asdict(publication)
    data["created_at"] = publication.created_at.isoformat()
    data["updated_at"] = publication.updated_at.isoformat()
    for result in data["results"]:
        result["state"] = PublicationState(result["state"]).name.lower()
    if not data["tenant"]:
        del data["tenant"]  # as records from before tenants are: byte for byte
    return json.dumps(data, sort_keys=True).encode()


def record_of(raw: bytes) -> Publication:
    data: dict[str, Any] = json.loads(raw)
    results = tuple(_result(r) for r in data.pop("results"))
    return Publication(
        **{k: v for k, v in data.items() if k not in ("created_at", "updated_at")},
        results=results,
        created_at=datetime.fromisoformat(data["created_at"]),
        updated_at=datetime.fromisoformat(data["updated_at"]),
    )


def _result(data: dict[str, Any]) -> TargetResult:
    state = data.pop("state", "pending")
    retired = tuple(data.pop("retired", ()))
    known = PublicationState[state.upper()] if isinstance(state, str) else PublicationState(state)
    return TargetResult(**data, state=known, retired=retired)


def record_key(publication_id: str) -> str:
    """The KV key of a publication: its id, checked, since KV keys take a
    restricted alphabet (ids are Kiln ids; automatic ones "auto-<build id>")."""
    check_id(publication_id.removeprefix("auto-"), "publication id")
    return publication_id
