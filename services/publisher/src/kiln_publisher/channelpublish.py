"""Channel-following publishing: a durable consumer on channel.moved. A recipe's
Glance target with `channel: stable` keeps the image under its `name` as the
build the channel points at: when the channel moves to a build, that build is
published there, and Glance's rotation by name (keep, retire) retires the
image of the build it pointed at before.

An event is only a prompt (anyone who can write the events stream could
forge one): the builder's record must say the build succeeded and is not
revoked, for the event's tenant and recipe name, and the Channels API must
say the channel points at it now. If the channel moved on since, this event
is dropped: the later move has its own event."""

from __future__ import annotations

import contextlib
import logging
import os
import socket
from typing import Any

from nats.aio.msg import Msg
from nats.js import JetStreamContext

from kiln_common import jetstream
from kiln_common.builds import BuildState
from kiln_common.errors import KilnError, Unauthenticated, Unavailable
from kiln_common.events import STREAM, from_json, subject_for
from kiln_common.nats_access import CHANNEL_PUBLISH
from kiln_publisher import consumers
from kiln_publisher.core import PublisherCore
from kiln_publisher.model import channel_publication_id
from kiln_publisher.targets import Request, following

log = logging.getLogger(__name__)

CONSUMER = CHANNEL_PUBLISH  # the publisher's alone to use (kiln_common.nats_access)
SUBJECT = subject_for("channel.moved")
MAX_CATCH_UP = 3  # publishes of a channel's newer build after one that it left
CLAIM_TTL = 4 * consumers.HEARTBEAT  # a claim not renewed this long: its replica died
OWNER = f"{socket.gethostname()}:{os.getpid()}"


async def handle(core: PublisherCore, build_id: str, data: dict[str, Any], depth: int = 0) -> str:
    """Publishes build_id to the recipe's targets following the event's
    channel; the publication's state, or 'ignored' (the records do not bear
    the event out), 'moved-on' (the channel points elsewhere now) or
    'skipped' (no target follows that channel)."""
    name, channel = str(data.get("name", "")), str(data.get("channel", ""))
    tenant = str(data.get("tenant", ""))
    build = await core.build(build_id) if build_id else None
    if (
        build is None
        or build.state != BuildState.SUCCEEDED
        or build.revoked is not None
        or build.tenant != tenant
        or build.name != name
    ):
        log.warning("channel.moved to build %s, which the builder does not bear out:"
                    " ignored", build_id)  # fmt: skip
        return "ignored"
    if await core.channel_build(name, channel, build.tenant) != build_id:
        log.info("channel %s of %s moved on from build %s: nothing to do", channel, name, build_id)
        return "moved-on"
    publish = following((await core.recipe_of(build_id)).publish, channel)
    if not publish.targets:
        return "skipped"
    pub = await core.publish(
        Request(build_id=build_id, publish=publish),
        channel_publication_id(build_id, channel),
        build.tenant,
        again=True,  # a channel moved back: the image is shown under the name again
    )
    state = pub.state.name.lower()
    log.info("channel %s of %s: build %s published, %s", channel, name, build_id, state)
    await core.settle_revoked(build_id)  # revoked while it was being published
    # The channel moved on while this ran, and another replica may have
    # published the newer build first: the name must end showing the channel's.
    now_at = await core.channel_build(name, channel, build.tenant)
    if now_at and now_at != build_id and depth < MAX_CATCH_UP:
        return await handle(core, now_at, data, depth + 1)
    return state


async def _one(core: PublisherCore, msg: Msg) -> None:
    event = from_json(msg.data)
    data = consumers.data_of(msg.data)
    try:
        publication = channel_publication_id(event.subject, str(data.get("channel", "")))
    except KilnError as exc:  # not a build id or channel: no event of the builder's
        log.warning("channel.moved event %s dropped: %s", event.id, exc)
        await msg.ack()
        return
    # Two replicas must not publish one move at once (a duplicate event).
    try:
        claimed = await core.claims.claim(publication, OWNER, CLAIM_TTL)
    except KilnError as exc:
        log.warning("channel publishing of %s put off: %s", publication, exc)
        await msg.nak(delay=consumers.retry_delay(msg))
        return
    if claimed is None:
        await msg.nak(delay=CLAIM_TTL / 2)
        return

    async def renew() -> None:
        nonlocal claimed
        assert claimed is not None
        claimed = await core.claims.renew(publication, OWNER, claimed)

    try:
        async with consumers.in_hand(msg, renew):
            await handle(core, event.subject, data)
    except (Unavailable, Unauthenticated) as exc:
        log.warning("channel publishing of %s put off: %s", publication, exc)
        await msg.nak(delay=consumers.retry_delay(msg))
        return
    except KilnError as exc:
        log.warning("channel publishing of %s failed: %s", publication, exc)
        with contextlib.suppress(KilnError):
            await core.record_failure(
                publication, event.subject, str(exc), str(data.get("tenant", ""))
            )
    except Exception:
        log.exception("channel publishing of %s failed", publication)  # acked: no loop
    finally:
        with contextlib.suppress(KilnError):
            await core.claims.release(publication)
    await msg.ack()


async def run(core: PublisherCore, js: JetStreamContext) -> None:
    """Takes channel.moved events one at a time until cancelled."""

    async def one(msg: Msg) -> None:
        await _one(core, msg)

    await jetstream.consume(js, STREAM, CONSUMER, lambda: consumers.ensure(js, CONSUMER, SUBJECT),
                            one, "channel publishing", consumers.FETCH_SECONDS)  # fmt: skip
