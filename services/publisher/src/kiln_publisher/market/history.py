"""An entry's publication history: every statement its key still holds in
the marketplace bucket (which keeps HISTORY of them per key), each verified
again, oldest first, and what each one did to the one before."""

from __future__ import annotations

from dataclasses import dataclass

from nats.js import JetStreamContext
from nats.js.api import DeliverPolicy, StreamConfig

from kiln_common import jetstream
from kiln_market.entry import Entry

HISTORY = 64  # statements kept per key: the most a NATS key-value bucket keeps
_REMOVED = ("DEL", "PURGE")
_WAIT = 10.0  # seconds for the next statement: longer is NATS away


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


async def statements(js: JetStreamContext, bucket: str, key: str) -> list[bytes]:
    """Every document the bucket still holds under key, oldest first (the
    caller knows the key holds one: else this waits for none to come)."""
    sub = await js.subscribe(
        f"$KV.{bucket}.{key}",
        stream=f"KV_{bucket}",
        ordered_consumer=True,
        deliver_policy=DeliverPolicy.ALL,
    )
    documents: list[bytes] = []
    try:
        while True:
            msg = await sub.next_msg(timeout=_WAIT)
            if (msg.headers or {}).get("KV-Operation") in _REMOVED:
                documents.clear()  # a statement before a delete is no longer the entry's
            else:
                documents.append(msg.data)
            if msg.metadata.num_pending == 0:
                return documents
    finally:
        await sub.unsubscribe()


async def keep_history(js: JetStreamContext, bucket: str) -> None:
    """Raises the bucket's statements per key to HISTORY: a bucket made
    before the history was kept holds the newest alone."""
    info = await jetstream.mapped(lambda: js.stream_info(f"KV_{bucket}"))
    config: StreamConfig = info.config
    if (config.max_msgs_per_subject or 0) < HISTORY:
        config.max_msgs_per_subject = HISTORY
        await jetstream.mapped(lambda: js.update_stream(config))
