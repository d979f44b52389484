"""Revocation: a durable consumer on build.revoked. Whatever was published of
a revoked build is taken out of use: its Glance images hidden or deactivated
(never deleted: people may need to inspect them), its marketplace entries
deprecated. The work is PublisherCore.revoke_build's, which re-reads the
builder's record first (an event is only a prompt); this module only takes
events and acks them. Revoking twice does no harm, so a redelivered event,
or two replicas given a duplicate, are fine."""

from __future__ import annotations

import logging
from collections.abc import Awaitable

from nats.aio.msg import Msg
from nats.js import JetStreamContext

from kiln_common import jetstream
from kiln_common.errors import (
    FailedPrecondition,
    InvalidArgument,
    KilnError,
)
from kiln_common.events import STREAM, from_json, subject_for
from kiln_common.nats_access import REVOKE
from kiln_publisher import consumers
from kiln_publisher.core import PublisherCore

log = logging.getLogger(__name__)

CONSUMER = REVOKE  # the publisher's alone to use (kiln_common.nats_access)
SUBJECT = subject_for("build.revoked")


async def _one(core: PublisherCore, msg: Msg) -> None:
    build_id = from_json(msg.data).subject
    try:
        async with consumers.in_hand(msg):
            done = await core.revoke_build(build_id)
    except (FailedPrecondition, InvalidArgument) as exc:
        # Not revoked (a forged or stray event) or not a build id: nothing to do.
        log.warning("build.revoked for %s ignored: %s", build_id, exc)
    except KilnError as exc:
        # Anything else (a service away, a refusal that may pass) is tried
        # again, later each time and never given up: a revoked build's images
        # must not stay in use.
        log.warning("revoking build %s put off: %s", build_id, exc)
        await msg.nak(delay=consumers.retry_delay(msg))
        return
    else:
        log.info("build %s revoked: %d images retired, %d entries deprecated",
                 build_id, len(done.images), len(done.entries))  # fmt: skip
        if done.failed:
            # Each step is idempotent: the redelivery does again what is done.
            log.warning("revoking build %s left: %s", build_id, "; ".join(done.failed))
            await msg.nak(delay=consumers.retry_delay(msg))
            return
    await msg.ack()


async def run(core: PublisherCore, js: JetStreamContext) -> None:
    """Takes build.revoked events one at a time until cancelled."""

    async def one(msg: Msg) -> None:
        await _one(core, msg)

    def ensure() -> Awaitable[None]:
        return consumers.ensure(js, CONSUMER, SUBJECT, max_deliver=-1)  # never given up

    await jetstream.consume(js, STREAM, CONSUMER, ensure, one, "revocation",
                            consumers.FETCH_SECONDS)  # fmt: skip
