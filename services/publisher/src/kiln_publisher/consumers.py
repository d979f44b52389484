"""What the publisher's durable consumers of the events stream share: their
configuration and the heartbeat that keeps a message in hand while its work
runs. Each consumer's own module decides what a message means."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from kiln_common import jetstream
from kiln_common.errors import KilnError
from kiln_common.events import STREAM

ACK_WAIT = 60.0  # seconds; work in hand says in_progress well within it
HEARTBEAT = 15.0
MAX_DELIVER = 20
FETCH_SECONDS = 5.0
RETRY_SECONDS = 10.0  # a message put off (a service away) comes back after this
MAX_RETRY_SECONDS = 300.0
Renew = Callable[[], Awaitable[object]]


async def ensure(
    js: JetStreamContext, durable: str, subject: str, max_deliver: int = MAX_DELIVER
) -> None:
    """max_deliver: -1 for work that must not be given up (revocation)."""
    config = ConsumerConfig(
        durable_name=durable,
        ack_policy=AckPolicy.EXPLICIT,
        # New events only: a publisher added to an old stack does not replay history.
        deliver_policy=DeliverPolicy.NEW,
        ack_wait=ACK_WAIT,
        max_deliver=max_deliver,
        filter_subject=subject,
    )
    await jetstream.mapped(lambda: js.add_consumer(STREAM, config))


async def _beat(msg: Msg, renew: Renew | None) -> None:
    while True:
        await asyncio.sleep(HEARTBEAT)
        with contextlib.suppress(Exception):
            await msg.in_progress()
        if renew is not None:
            with contextlib.suppress(KilnError):
                await renew()


@contextlib.asynccontextmanager
async def in_hand(msg: Msg, renew: Renew | None = None) -> AsyncIterator[None]:
    """Keeps msg from being redelivered while the block runs (a long upload),
    and the work's claim from going stale (renew, called each heartbeat)."""
    beat = asyncio.create_task(_beat(msg, renew))
    try:
        yield
    finally:
        beat.cancel()


def retry_delay(msg: Msg) -> float:
    """How long a message put off waits: longer at each delivery, up to 5 minutes."""
    delivered = msg.metadata.num_delivered if msg.metadata is not None else 1
    return float(min(MAX_RETRY_SECONDS, RETRY_SECONDS * 2 ** max(0, (delivered or 1) - 1)))


def data_of(raw: bytes) -> dict[str, Any]:
    """An event's data as plain JSON values ({} if it has none), read from its
    JSON envelope (protobuf stays at the edges: kiln_common.events parses it)."""
    data = json.loads(raw).get("data")
    return data if isinstance(data, dict) else {}
