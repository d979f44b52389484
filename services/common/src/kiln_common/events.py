"""Kiln events: CloudEvents-style JSON envelopes (kiln.events.v1.Event) on a
NATS JetStream stream. An event is a fact that has happened; work that must be
done exactly once goes through a work queue instead (see the builder)."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
from datetime import UTC, datetime
from typing import Any, Protocol

import nats
from google.protobuf import json_format
from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext
from nats.js.api import StreamConfig
from nats.js.errors import BadRequestError

from kiln_api.events.v1 import events_pb2
from kiln_common.ids import new_id

log = logging.getLogger(__name__)

STREAM = "KILN_EVENTS"
SUBJECT_PREFIX = "kiln.events."
PUBLISH_ATTEMPTS = 3


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


async def ensure_stream(js: JetStreamContext, name: str = STREAM) -> None:
    config = StreamConfig(name=name, subjects=[SUBJECT_PREFIX + ">"], duplicate_window=120.0)
    try:
        await js.add_stream(config)
    except BadRequestError:
        await js.update_stream(config)


class JetStreamPublisher:
    """Publishes events with the event id as Nats-Msg-Id, so a retried publish
    is deduplicated by the stream, and waits for the stream's ack."""

    def __init__(self, nc: NatsClient, js: JetStreamContext, source: str) -> None:
        self._nc = nc
        self._js = js
        self._source = source

    @classmethod
    async def connect(cls, url: str, source: str) -> JetStreamPublisher:
        nc = await nats.connect(url, connect_timeout=5, max_reconnect_attempts=-1, name=source)
        js = nc.jetstream()
        await ensure_stream(js)
        return cls(nc, js, source)

    async def publish(self, type_: str, subject: str, data: dict[str, Any]) -> None:
        event = make_event(type_, subject, data, self._source)
        body = to_json(event)
        for attempt in range(1, PUBLISH_ATTEMPTS + 1):
            try:
                await self._js.publish(
                    subject_for(type_), body, headers={"Nats-Msg-Id": event.id}, timeout=5
                )
                return
            except Exception as exc:  # noqa: BLE001 - any NATS failure is retried
                if attempt == PUBLISH_ATTEMPTS:
                    # The fact happened whatever NATS says; do not fail the caller.
                    log.error(
                        "event %s lost after %d attempts: %s: %s",
                        json.loads(body)["type"],
                        attempt,
                        exc,
                        body.decode(),
                    )
                    return
                await asyncio.sleep(0.2 * 2**attempt)

    async def close(self) -> None:
        if not self._nc.is_closed:
            await self._nc.drain()
