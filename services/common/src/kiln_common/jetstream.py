"""The one JetStream adapter every Kiln service uses: connecting (reconnect
for ever), creating or updating streams, key-value buckets and object stores
with the configured replicas, and NATS errors as Kiln errors, the way the
storage service's S3 backend maps S3 errors: a NATS that is away is
Unavailable (a client retries, a worker hands the build back), a missing
entry NotFound."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar

import nats
import nats.errors as nerr
import nats.js.errors as jerr
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import (
    DeliverPolicy,
    KeyValueConfig,
    ObjectStoreConfig,
    StorageType,
    StreamConfig,
)
from nats.js.kv import KeyValue
from nats.js.object_store import ObjectStore

from kiln_common.errors import FailedPrecondition, KilnError, NotFound, Unavailable

log = logging.getLogger(__name__)
T = TypeVar("T")

# NATS failures that say "not now" rather than "not ever".
_UNAVAILABLE: tuple[type[BaseException], ...] = (
    nerr.TimeoutError,
    nerr.NoRespondersError,
    nerr.ConnectionClosedError,
    nerr.ConnectionReconnectingError,
    nerr.ConnectionDrainingError,
    nerr.StaleConnectionError,
    nerr.OutboundBufferLimitError,
    nerr.NoServersError,
    nerr.FlushTimeoutError,
    nerr.UnexpectedEOF,
    jerr.ServiceUnavailableError,
    jerr.ServerError,
    jerr.NoStreamResponseError,
    jerr.FetchTimeoutError,
    asyncio.TimeoutError,
)
_NOT_FOUND: tuple[type[BaseException], ...] = (
    jerr.NotFoundError,
    jerr.KeyNotFoundError,
    jerr.ObjectNotFoundError,
    jerr.BucketNotFoundError,
)


def translate(exc: BaseException) -> KilnError | None:
    """The Kiln error a NATS failure stands for, or None if it is not one."""
    if isinstance(exc, KilnError):
        return exc
    if isinstance(exc, _UNAVAILABLE):
        return Unavailable(f"NATS is unavailable ({type(exc).__name__}); try again later")
    if isinstance(exc, _NOT_FOUND):
        return NotFound(f"not found in NATS: {exc}")
    if isinstance(exc, jerr.KeyWrongLastSequenceError):
        return FailedPrecondition("changed by someone else meanwhile; try again")
    return None


async def mapped(call: Callable[[], Awaitable[T]]) -> T:
    """The call's result; a NATS failure raises its Kiln error."""
    try:
        return await call()
    except Exception as exc:
        error = translate(exc)
        if error is None or error is exc:
            raise
        raise error from exc


async def connect(url: str, name: str) -> NatsClient:
    """A connection that keeps reconnecting, however long NATS is away."""

    async def disconnected() -> None:
        log.warning("NATS connection lost; reconnecting")

    async def reconnected() -> None:
        log.warning("NATS reconnected")

    async def failed(exc: Exception) -> None:
        # One line, not nats-py's default traceback: a NATS that is away is
        # expected and retried; translate() says what it means here.
        log.warning("NATS: %s", translate(exc) or exc)

    return await nats.connect(
        url,
        name=name,
        connect_timeout=5,
        max_reconnect_attempts=-1,
        reconnect_time_wait=1,
        disconnected_cb=disconnected,
        reconnected_cb=reconnected,
        error_cb=failed,
    )


async def ensure_stream(js: JetStreamContext, config: StreamConfig, replicas: int = 1) -> None:
    """Creates the stream, or updates it to this config."""
    config.num_replicas = replicas
    try:
        await js.add_stream(config)
    except jerr.BadRequestError:
        await js.update_stream(config)


async def _open_or_create(
    open_: Callable[[], Awaitable[T]], create: Callable[[], Awaitable[T]]
) -> T:
    """A bucket, created if missing. Pods starting together may race to
    create it: the loser opens it."""
    try:
        return await open_()
    except (jerr.BucketNotFoundError, jerr.NotFoundError):
        pass
    try:
        return await create()
    except jerr.BadRequestError:
        return await open_()


async def key_value(
    js: JetStreamContext, name: str, *, history: int = 1, replicas: int = 1
) -> KeyValue:
    config = KeyValueConfig(
        bucket=name, history=history, storage=StorageType.FILE, replicas=replicas
    )
    return await _open_or_create(
        lambda: js.key_value(name), lambda: js.create_key_value(config=config)
    )


_KV_REMOVED = ("DEL", "PURGE")  # a deleted or purged key's KV-Operation header
_KV_WAIT = 10.0  # seconds for the next message: longer is NATS away (Unavailable)


def _kv_removed(msg: Msg) -> bool:
    return (msg.headers or {}).get("KV-Operation") in _KV_REMOVED


async def _kv_messages(
    js: JetStreamContext, bucket: str, subject: str, deliver: DeliverPolicy, headers_only: bool
) -> AsyncIterator[Msg]:
    """The bucket's messages on subject as the stream holds them now, through
    an ordered consumer, ending with the one after which nothing is pending
    (the caller knows there is at least one: else this waits, then times out)."""
    sub = await js.subscribe(
        subject,
        stream=f"KV_{bucket}",
        ordered_consumer=True,
        deliver_policy=deliver,
        headers_only=headers_only,
    )
    try:
        while True:
            msg = await sub.next_msg(timeout=_KV_WAIT)
            yield msg
            if msg.metadata.num_pending == 0:
                return
    finally:
        await sub.unsubscribe()


async def kv_keys(js: JetStreamContext, bucket: str) -> list[str]:
    """The live keys of a bucket, oldest newest-write first.

    Not KeyValue.keys(): its watcher can mark the end of the initial values
    before it has processed the first of them, and a full bucket then looks
    empty (nats-io/nats.py#842; a restarted publisher found no marketplace
    entries). Here an empty bucket is told by its stream's message count, and
    the end by the message after which nothing is pending."""
    prefix = f"$KV.{bucket}."
    if not (await js.stream_info(f"KV_{bucket}")).state.messages:
        return []
    messages = _kv_messages(js, bucket, f"{prefix}>", DeliverPolicy.LAST_PER_SUBJECT, True)
    return [m.subject.removeprefix(prefix) async for m in messages if not _kv_removed(m)]


async def kv_history(js: JetStreamContext, bucket: str, key: str) -> list[bytes]:
    """Every value the bucket still holds under key, oldest first, from its
    last delete or purge on (the caller knows the key holds one: else this
    waits, then times out). Not KeyValue.history(): it is built on the same
    watcher as keys() (see kv_keys)."""
    values: list[bytes] = []
    async for msg in _kv_messages(js, bucket, f"$KV.{bucket}.{key}", DeliverPolicy.ALL, False):
        if _kv_removed(msg):
            values.clear()  # a value before a delete is no longer the key's
        else:
            values.append(msg.data)
    return values


async def object_store(
    js: JetStreamContext, name: str, *, ttl: float | None = None, replicas: int = 1
) -> ObjectStore:
    config = ObjectStoreConfig(bucket=name, ttl=ttl, storage=StorageType.FILE, replicas=replicas)
    return await _open_or_create(
        lambda: js.object_store(name), lambda: js.create_object_store(name, config=config)
    )


async def consume(
    js: JetStreamContext, stream: str, consumer: str, ensure: Callable[[], Awaitable[None]],
    handle: Callable[[Msg], Awaitable[None]], what: str, wait: float = 5.0,
) -> None:  # fmt: skip
    """Takes messages from a durable pull consumer one at a time until
    cancelled, after ensure() made the consumer. While NATS is away it waits
    and keeps the loop; handle acks (or leaves a message for redelivery)."""
    while True:
        try:
            await ensure()
            sub = await js.pull_subscribe_bind(consumer, stream)
            break
        except Exception as exc:  # noqa: BLE001 - NATS away: wait for it
            log.warning("%s waits for NATS: %s", what, translate(exc) or exc)
            await asyncio.sleep(wait)
    try:
        while True:
            try:
                msgs = await sub.fetch(1, timeout=wait)
            except (TimeoutError, nerr.TimeoutError):
                continue
            except Exception as exc:  # noqa: BLE001 - NATS away: keep the loop
                log.warning("%s cannot fetch: %s", what, translate(exc) or exc)
                await asyncio.sleep(wait)
                continue
            try:
                await handle(msgs[0])
            except Exception:  # the loop outlives one message (unacked: redelivered)
                log.exception("%s: a message was not handled", what)
    finally:
        with contextlib.suppress(Exception):
            await sub.unsubscribe()
