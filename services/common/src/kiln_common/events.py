"""Kiln events: CloudEvents-style JSON envelopes (kiln.events.v1.Event) on a
NATS JetStream stream. An event is a fact that has happened; work that must be
done exactly once goes through a work queue instead (see the builder)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from google.protobuf import json_format
from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext
from nats.js.api import StreamConfig

from kiln_api.events.v1 import events_pb2
from kiln_common import jetstream
from kiln_common.ids import new_id
from kiln_common.outbox import Outbox
from kiln_common.retry import RetryPolicy

log = logging.getLogger(__name__)

STREAM = "KILN_EVENTS"
SUBJECT_PREFIX = "kiln.events."
# The outbox is sent for as long as it takes: NATS may be away for a while.
OUTBOX_POLICY = RetryPolicy(attempts=1_000_000, initial=0.5, maximum=5.0, deadline=None)


def make_event(type_: str, subject: str, data: dict[str, Any], source: str) -> events_pb2.Event:
    event = events_pb2.Event(
        specversion="1.0",
        id=new_id(),
        source=source,
        type=type_,
        subject=subject,
        datacontenttype="application/json",
    )
    event.time.FromDatetime(datetime.now(UTC))
    event.data.update(data)
    return event


def to_json(event: events_pb2.Event) -> bytes:
    return json_format.MessageToJson(event, preserving_proto_field_name=True).encode()


def from_json(raw: bytes) -> events_pb2.Event:
    return json_format.Parse(raw, events_pb2.Event())


def subject_for(type_: str) -> str:
    return SUBJECT_PREFIX + type_


def default_source(service: str) -> str:
    return f"{service}/{socket.gethostname()}"


class Publisher(Protocol):
    async def publish(self, type_: str, subject: str, data: dict[str, Any]) -> None: ...

    async def close(self) -> None: ...


class NoEvents:
    """Used when no NATS URL is configured: events are logged, not sent."""

    async def publish(self, type_: str, subject: str, data: dict[str, Any]) -> None:
        log.debug("event %s %s (events disabled)", type_, subject)

    async def close(self) -> None:
        return None


# Long enough that an event kept in the outbox through a NATS outage, then
# sent again, is still recognised as sent if its first publish did land.
DUPLICATE_WINDOW = 3600.0


async def ensure_stream(js: JetStreamContext, name: str = STREAM, replicas: int = 1) -> None:
    config = StreamConfig(
        name=name, subjects=[SUBJECT_PREFIX + ">"], duplicate_window=DUPLICATE_WINDOW
    )
    await jetstream.ensure_stream(js, config, replicas)


class JetStreamPublisher:
    """Publishes events with the event id as Nats-Msg-Id, so a publish sent
    twice is stored once, and waits for the stream's ack. An event that
    cannot be sent now goes to the outbox, and every later one behind it (so
    the order holds) until a background task has sent them all."""

    def __init__(
        self,
        nc: NatsClient,
        js: JetStreamContext,
        source: str,
        outbox: Outbox | None = None,
        policy: RetryPolicy = OUTBOX_POLICY,
    ) -> None:
        self._nc = nc
        self._js = js
        self.js = js  # the service's JetStream context (identities read their tokens there)
        self._source = source
        self.outbox = outbox if outbox is not None else Outbox(None, source)
        self._policy = policy
        self._flusher: asyncio.Task[None] | None = None
        if len(self.outbox):
            self._kick()

    @classmethod
    async def connect(
        cls, url: str, source: str, outbox_dir: Path | None = None, replicas: int = 1
    ) -> JetStreamPublisher:
        nc = await jetstream.connect(url, source)
        js = nc.jetstream()
        await ensure_stream(js, replicas=replicas)
        return cls(nc, js, source, Outbox(outbox_dir, source))

    async def publish(self, type_: str, subject: str, data: dict[str, Any]) -> None:
        """Never fails the caller: the fact happened whatever NATS says."""
        event = make_event(type_, subject, data, self._source)
        body = to_json(event)
        if not len(self.outbox):
            try:
                await self._send(event.id, subject_for(type_), body)
                return
            except Exception as exc:  # noqa: BLE001 - any failure: the outbox keeps it
                log.warning("event %s %s kept in the outbox: %s", type_, event.id, exc)
        self.outbox.add(event.id, subject_for(type_), body)
        self._kick()

    async def _send(self, event_id: str, subject: str, body: bytes) -> None:
        await self._js.publish(subject, body, headers={"Nats-Msg-Id": event_id}, timeout=5)

    def _kick(self) -> None:
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush())

    async def _flush(self) -> None:
        """Sends the outbox, oldest first, until it is empty."""
        backoff = self._policy.backoff("sending the event outbox")
        while (pending := self.outbox.oldest()) is not None:
            event_id, subject, body = pending
            try:
                await self._send(event_id, subject, body)
            except Exception as exc:  # noqa: BLE001 - retried until NATS is back
                await backoff.wait(jetstream.translate(exc) or exc)
                continue
            self.outbox.sent(event_id)
            backoff.reset()
        log.info("event outbox sent")

    async def flush(self, seconds: float) -> bool:
        """Waits up to seconds for the outbox to empty; True if it did."""
        if self._flusher is not None and not self._flusher.done():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._flusher), seconds)
        return not len(self.outbox)

    async def close(self) -> None:
        if not await self.flush(5.0):
            log.warning("%d events stay in the outbox for the next start", len(self.outbox))
        if self._flusher is not None:
            self._flusher.cancel()
        self.outbox.close()
        if not self._nc.is_closed:
            await self._nc.drain()
