"""The build queue: a JetStream work-queue stream with one durable pull
consumer that every builder pod shares. A message is a build id; a worker
acks it only when the build has ended, heartbeats while it runs, and a
message whose worker died is delivered again after ack_wait."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)

from kiln_common import jetstream

STREAM = "KILN_BUILD_QUEUE"
SUBJECT = "kiln.build-queue"
CONSUMER = "builders"
CANCEL_PREFIX = "kiln.build-cancel."  # core NATS: "stop this build if you run it"
# Published by the server when a message has been delivered max_deliver times.
MAX_DELIVERIES_ADVISORY = f"$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{STREAM}.{CONSUMER}"
# Pods read the advisory as one queue group: one of them handles each.
ADVISORY_GROUP = "kiln-builders"


@dataclass(frozen=True)
class QueuePolicy:
    ack_wait: float = 60.0  # a worker silent this long is presumed dead
    max_deliver: int = 4  # deliveries of one build, first run included
    max_ack_pending: int = 1000


async def ensure(js: JetStreamContext, policy: QueuePolicy, replicas: int = 1) -> None:
    stream = StreamConfig(
        name=STREAM,
        subjects=[SUBJECT],
        retention=RetentionPolicy.WORK_QUEUE,
        storage=StorageType.FILE,
        duplicate_window=600.0,  # a build id queued twice is stored once
    )
    await jetstream.ensure_stream(js, stream, replicas)
    consumer = ConsumerConfig(
        durable_name=CONSUMER,
        ack_policy=AckPolicy.EXPLICIT,
        deliver_policy=DeliverPolicy.ALL,
        ack_wait=policy.ack_wait,
        max_deliver=policy.max_deliver,
        max_ack_pending=policy.max_ack_pending,
        filter_subject=SUBJECT,
    )
    # Creates the consumer, or updates it to this pod's policy.
    await js.add_consumer(STREAM, consumer)


class Delivery(Protocol):
    """One delivery of a build's queue message, as a worker handles it."""

    @property
    def build_id(self) -> str: ...

    @property
    def attempt(self) -> int:
        """Which delivery this is, from 1."""

    async def ack(self) -> None:
        """The build has ended: never deliver it again."""

    async def nak(self, delay: float) -> None:
        """Deliver it again, to any worker, after delay seconds."""

    async def term(self) -> None:
        """The build failed for good: never deliver it again."""

    async def in_progress(self) -> None:
        """Still running: do not presume this worker dead for another ack_wait."""


@dataclass
class JetStreamDelivery:
    """A Delivery over a JetStream message."""

    msg: Msg

    @property
    def build_id(self) -> str:
        return self.msg.data.decode()

    @property
    def attempt(self) -> int:
        return int(self.msg.metadata.num_delivered or 1)

    async def ack(self) -> None:
        await jetstream.mapped(self.msg.ack)

    async def nak(self, delay: float) -> None:
        await jetstream.mapped(lambda: self.msg.nak(delay=delay))

    async def term(self) -> None:
        await jetstream.mapped(self.msg.term)

    async def in_progress(self) -> None:
        await jetstream.mapped(self.msg.in_progress)


async def enqueue(js: JetStreamContext, build_id: str) -> None:
    await js.publish(SUBJECT, build_id.encode(), headers={"Nats-Msg-Id": build_id}, timeout=10)


def cancel_subject(build_id: str) -> str:
    return CANCEL_PREFIX + build_id
