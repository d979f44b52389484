"""The build queue: a JetStream work-queue stream, one subject and one
durable pull consumer per tenant (builders-<tenant>; `builders` for builds
made with identities off), shared by every builder pod. A message is a build
id; a worker acks it only when the build has ended, heartbeats while it runs,
and a message whose worker died is delivered again after ack_wait.

A queue per tenant is what makes scheduling fair: a free slot takes the next
build of the tenant it picks (kiln_builder.service.schedule), so one tenant's
hundred queued builds are not ahead of another tenant's one."""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from typing import Protocol

from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.errors import TimeoutError as NatsTimeout
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
SUBJECT = "kiln.build-queue"  # builds of no tenant; a tenant's: SUBJECT.<tenant>
CONSUMER = "builders"  # of SUBJECT; a tenant's: builders-<tenant>
CANCEL_PREFIX = "kiln.build-cancel."  # core NATS: "stop this build if you run it"
# Published by the server when a message has been delivered max_deliver times.
MAX_DELIVERIES_ADVISORY = f"$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{STREAM}.*"
TAKE_SECONDS = 5.0  # the server answers a no-wait pull at once; this is for a lost one
# Pods read the advisory as one queue group: one of them handles each.
ADVISORY_GROUP = "kiln-builders"


@dataclass(frozen=True)
class QueuePolicy:
    ack_wait: float = 60.0  # a worker silent this long is presumed dead
    max_deliver: int = 4  # deliveries of one build, first run included
    max_ack_pending: int = 1000


def subject(tenant: str) -> str:
    return f"{SUBJECT}.{tenant}" if tenant else SUBJECT


def consumer(tenant: str) -> str:
    return f"{CONSUMER}-{tenant}" if tenant else CONSUMER


async def waiting(js: JetStreamContext) -> set[str]:
    """The tenants whose queue holds messages not yet taken."""
    found = set()
    for info in await js.consumers_info(STREAM):
        name = info.name or ""
        if not info.num_pending:
            continue
        if name == CONSUMER:
            found.add("")
        elif name.startswith(CONSUMER + "-"):
            found.add(name.removeprefix(CONSUMER + "-"))
    return found


async def ensure(js: JetStreamContext, policy: QueuePolicy, replicas: int = 1) -> None:
    stream = StreamConfig(
        name=STREAM,
        subjects=[SUBJECT, SUBJECT + ".*"],
        retention=RetentionPolicy.WORK_QUEUE,
        storage=StorageType.FILE,
        duplicate_window=600.0,  # a build id queued twice is stored once
    )
    await jetstream.ensure_stream(js, stream, replicas)
    await ensure_queue(js, policy, "")


async def ensure_queue(js: JetStreamContext, policy: QueuePolicy, tenant: str) -> None:
    """The tenant's consumer: created, or updated to this pod's policy."""
    config = ConsumerConfig(
        durable_name=consumer(tenant),
        ack_policy=AckPolicy.EXPLICIT,
        deliver_policy=DeliverPolicy.ALL,
        ack_wait=policy.ack_wait,
        max_deliver=policy.max_deliver,
        max_ack_pending=policy.max_ack_pending,
        filter_subject=subject(tenant),
    )
    await js.add_consumer(STREAM, config)


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


async def enqueue(js: JetStreamContext, build_id: str, tenant: str, again: int = 0) -> None:
    """Queues the build on its tenant's queue. The message id dedupes a build
    queued twice; again > 0 queues it anew (a build put back for its turn)."""
    msg_id = f"{build_id}.{again}" if again else build_id
    await js.publish(
        subject(tenant), build_id.encode(), headers={"Nats-Msg-Id": msg_id}, timeout=10
    )


async def take(nc: NatsClient, tenant: str) -> Msg | None:
    """The tenant's next build message, or None at once if it has none: a
    no-wait pull, so a worker looks at many tenants' queues without waiting
    on the empty ones. Its own inbox: a pulled message arrives under its
    stream subject, which a request's reply routing would not recognise."""
    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox, max_msgs=1)
    try:
        pull = json.dumps({"batch": 1, "no_wait": True}).encode()
        await nc.publish(
            f"$JS.API.CONSUMER.MSG.NEXT.{STREAM}.{consumer(tenant)}", pull, reply=inbox
        )
        try:
            msg = await sub.next_msg(timeout=TAKE_SECONDS)
        except (TimeoutError, NatsTimeout):
            return None
    finally:
        with contextlib.suppress(Exception):
            await sub.unsubscribe()
    if msg.headers and msg.headers.get("Status"):  # 404 no messages, 408, 409, 503: none now
        return None
    return msg


def cancel_subject(build_id: str) -> str:
    return CANCEL_PREFIX + build_id
