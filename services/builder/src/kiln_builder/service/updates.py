"""A build's updates (state changes, steps, progress, log lines) on a
JetStream stream, one subject per build. Any pod can replay them to a
watcher, from the start or after the last sequence the watcher saw."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

from nats.errors import TimeoutError as NatsTimeout
from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig, DeliverPolicy, StorageType, StreamConfig
from nats.js.errors import NotFoundError

from kiln_client import wire
from kiln_common import jetstream
from kiln_common.builds import BuildUpdate
from kiln_common.lifecycle import TERMINAL

STREAM = "KILN_BUILD_UPDATES"
PREFIX = "kiln.build-updates."
RETENTION_SECONDS = 14 * 24 * 3600
IDLE_CHECK_SECONDS = 2.0  # how often a quiet watch asks whether the build ended


def subject(build_id: str) -> str:
    return PREFIX + build_id


async def ensure_stream(js: JetStreamContext, replicas: int = 1) -> None:
    config = StreamConfig(
        name=STREAM,
        subjects=[PREFIX + "*"],
        storage=StorageType.FILE,
        max_age=RETENTION_SECONDS,
    )
    await jetstream.ensure_stream(js, config, replicas)


async def publish(js: JetStreamContext, update: BuildUpdate) -> int:
    """Stores the update; its seq is the stream's sequence number."""
    data = wire.update_message(update).SerializeToString()
    ack = await js.publish(subject(update.build_id), data, timeout=10)
    return int(ack.seq)


def is_final(update: BuildUpdate) -> bool:
    return update.state is not None and update.state in TERMINAL


async def watch(
    js: JetStreamContext,
    build_id: str,
    after_seq: int,
    ended: Callable[[], Awaitable[bool]],
    stored_only: bool = False,
) -> AsyncIterator[BuildUpdate]:
    """Updates after after_seq until the build's final state update. A quiet
    stream is checked against the record (ended()) now and then, so a watch
    that started after the end, or past the last update, still finishes.
    stored_only: end after the last update stored when the watch began."""
    config = ConsumerConfig(
        deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=after_seq + 1
    )
    sub = await js.subscribe(subject(build_id), ordered_consumer=True, config=config)
    seen = after_seq
    last = await _last_seq(js, build_id) if stored_only else 0
    try:
        while not stored_only or seen < last:
            try:
                msg = await sub.next_msg(timeout=IDLE_CHECK_SECONDS)
            except (TimeoutError, NatsTimeout):
                if await ended() and await _last_seq(js, build_id) <= seen:
                    return
                continue
            update = wire.update_from_bytes(msg.data)
            update.seq = seen = msg.metadata.sequence.stream
            yield update
            if is_final(update):
                return
    finally:
        with contextlib.suppress(Exception):
            await sub.unsubscribe()


async def _last_seq(js: JetStreamContext, build_id: str) -> int:
    try:
        return int((await js.get_last_msg(STREAM, subject(build_id))).seq or 0)
    except NotFoundError:
        return 0
