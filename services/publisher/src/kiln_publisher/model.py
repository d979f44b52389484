"""Publications as the publisher keeps them: JSON in a NATS KV bucket, so any
publisher replica answers. The model is kiln_common.publications'; a stored
state is its name in lower case (as records written before it say it)."""

from __future__ import annotations

import json
from dataclasses import asdict
from datetime import datetime
from typing import Any

from kiln_common.channels import check_channel
from kiln_common.errors import InvalidArgument
from kiln_common.ids import check_id
from kiln_common.publications import Publication, PublicationState, TargetResult

Result = TargetResult  # one target's outcome for one artifact
PENDING, RUNNING = PublicationState.PENDING, PublicationState.RUNNING
DONE, FAILED = PublicationState.DONE, PublicationState.FAILED
AUTO_PREFIX = "auto-"  # auto-<build id>: published when the build succeeded
CHANNEL_PREFIX = "chan-"  # chan-<build id>-<channel>: published when the channel moved to it


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


def channel_publication_id(build_id: str, channel: str) -> str:
    return f"{CHANNEL_PREFIX}{check_id(build_id, 'build id')}-{check_channel(channel)}"


def record_key(publication_id: str) -> str:
    """The KV key of a publication: its id, checked, since KV keys take a
    restricted alphabet (ids are Kiln ids; automatic ones "auto-<build id>",
    channel ones "chan-<build id>-<channel>": a Kiln id has no "-", a channel
    name only a-z 0-9 -, all in the KV alphabet)."""
    if publication_id.startswith(CHANNEL_PREFIX):
        build_id, _, channel = publication_id.removeprefix(CHANNEL_PREFIX).partition("-")
        check_id(build_id, "publication id")
        try:
            check_channel(channel)
        except InvalidArgument:
            raise InvalidArgument(
                f"publication id {publication_id[:80]!r} names no channel"
            ) from None
        return publication_id
    check_id(publication_id.removeprefix(AUTO_PREFIX), "publication id")
    return publication_id
