"""What the publisher's durable consumers of the events stream share: their
configuration and the heartbeat that keeps a message in hand while its work
runs. Each consumer's own module decides what a message means."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from kiln_common import jetstream
from kiln_common.events import STREAM

ACK_WAIT = 60.0  # seconds; work in hand says in_progress well within it
HEARTBEAT = 15.0
MAX_DELIVER = 20
FETCH_SECONDS = 5.0
RETRY_SECONDS = 10.0  # a message put off (a service away) comes back after this


async def ensure(js: JetStreamContext, durable: str, subject: str) -> None:
    config = ConsumerConfig(
        durable_name=durable,
        ack_policy=AckPolicy.EXPLICIT,
        # New events only: a publisher added to an old stack does not replay history.
        deliver_policy=DeliverPolicy.NEW,
        ack_wait=ACK_WAIT,
        max_deliver=MAX_DELIVER,
        filter_subject=subject,
    )
    await jetstream.mapped(lambda: js.add_consumer(STREAM, config))


async def _beat(msg: Msg) -> None:
    while True:
        await asyncio.sleep(HEARTBEAT)
        with contextlib.suppress(Exception):
            await msg.in_progress()


@contextlib.asynccontextmanager
async def in_hand(msg: Msg) -> AsyncIterator[None]:
    """Keeps msg from being redelivered while the block runs (a long upload)."""
    beat = asyncio.create_task(_beat(msg))
    try:
        yield
    finally:
        beat.cancel()


def data_of(raw: bytes) -> dict[str, Any]:
    """An event's data as plain JSON values ({} if it has none), read from its
    JSON envelope (protobuf stays at the edges: kiln_common.events parses it)."""
    data = json.loads(raw).get("data")
    return data if isinstance(data, dict) else {}
