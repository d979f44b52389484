"""The build queue: a JetStream work-queue stream with one durable pull
consumer that every builder pod shares. A message is a build id; a worker
acks it only when the build has ended, heartbeats while it runs, and a
message whose worker died is delivered again after ack_wait."""

from __future__ import annotations

from dataclasses import dataclass

from nats.js import JetStreamContext
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from nats.js.errors import BadRequestError

STREAM = "KILN_BUILD_QUEUE"
SUBJECT = "kiln.build-queue"
CONSUMER = "builders"
CANCEL_PREFIX = "kiln.build-cancel."  # core NATS: "stop this build if you run it"
# Published by the server when a message has been delivered max_deliver times.
MAX_DELIVERIES_ADVISORY = f"$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{STREAM}.{CONSUMER}"


@dataclass(frozen=True)
class QueuePolicy:
    ack_wait: float = 60.0  # a worker silent this long is presumed dead
    max_deliver: int = 4  # deliveries of one build, first run included
    max_ack_pending: int = 1000


async def ensure(js: JetStreamContext, policy: QueuePolicy) -> None:
    stream = StreamConfig(
        name=STREAM,
        subjects=[SUBJECT],
        retention=RetentionPolicy.WORK_QUEUE,
        storage=StorageType.FILE,
        duplicate_window=600.0,  # a build id queued twice is stored once
    )
    try:
        await js.add_stream(stream)
    except BadRequestError:
        await js.update_stream(stream)
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


async def enqueue(js: JetStreamContext, build_id: str) -> None:
    await js.publish(SUBJECT, build_id.encode(), headers={"Nats-Msg-Id": build_id}, timeout=10)


def cancel_subject(build_id: str) -> str:
    return CANCEL_PREFIX + build_id
