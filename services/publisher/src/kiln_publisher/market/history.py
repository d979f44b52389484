"""An entry's publication history: every statement its key still holds in
the marketplace bucket (which keeps HISTORY of them per key), each verified
again, oldest first, and what each one did to the one before."""

from __future__ import annotations

from dataclasses import dataclass

from nats.js import JetStreamContext
from nats.js.api import StreamConfig

from kiln_common import jetstream
from kiln_market.entry import Entry

HISTORY = 64  # statements kept per key: the most a NATS key-value bucket keeps


@dataclass(frozen=True)
class Step:
    """One statement in an entry's history."""

    entry: Entry
    what: str  # published, endorsed again, deprecated, expired


def what_it_did(entry: Entry, before: Entry | None) -> str:
    if entry.deprecated and not (before and before.deprecated):
        return "deprecated"
    if entry.expired and not (before and before.expired):
        return "expired"
    if before is None and entry.sequence == 1:
        return "published"
    return f"endorsed again, superseding #{before.sequence if before else entry.sequence - 1}"


def steps(entries: list[Entry]) -> list[Step]:
    """Each statement with what it did, oldest first."""
    ordered = sorted(entries, key=lambda e: e.sequence)
    return [Step(e, what_it_did(e, ordered[i - 1] if i else None)) for i, e in enumerate(ordered)]


async def keep_history(js: JetStreamContext, bucket: str) -> None:
    """Raises the bucket's statements per key to HISTORY: a bucket made
    before the history was kept holds the newest alone."""
    info = await jetstream.mapped(lambda: js.stream_info(f"KV_{bucket}"))
    config: StreamConfig = info.config
    if (config.max_msgs_per_subject or 0) < HISTORY:
        config.max_msgs_per_subject = HISTORY
        await jetstream.mapped(lambda: js.update_stream(config))
