"""Automatic publishing: a durable consumer on build.succeeded. A build whose
recipe has publish: targets is published exactly once: its publication record
is `auto-<build id>`, finished targets are never done again, and the event is
acked only once the record says every target ended. A publisher that dies
mid-upload leaves the event unacked; it comes back after ack_wait and the next
pod finishes the targets still running (Glance publishing is idempotent per
artifact, so the half-done one gives the same image)."""

from __future__ import annotations

import contextlib
import logging
import os
import socket

from nats.aio.msg import Msg
from nats.js import JetStreamContext

from kiln_common import jetstream
from kiln_common.builds import BuildState
from kiln_common.errors import KilnError, Unauthenticated, Unavailable
from kiln_common.events import STREAM, from_json, subject_for
from kiln_common.nats_access import AUTO_PUBLISH
from kiln_publisher import consumers
from kiln_publisher.core import PublisherCore
from kiln_publisher.model import AUTO_PREFIX
from kiln_publisher.targets import Request, on_success

log = logging.getLogger(__name__)

CONSUMER = AUTO_PUBLISH  # the publisher's alone to use (kiln_common.nats_access)
SUBJECT = subject_for("build.succeeded")
CLAIM_TTL = 4 * consumers.HEARTBEAT
OWNER = f"{socket.gethostname()}:{os.getpid()}"


def publication_id(build_id: str) -> str:
    return f"{AUTO_PREFIX}{build_id}"


async def ensure(js: JetStreamContext) -> None:
    await consumers.ensure(js, CONSUMER, SUBJECT)


async def handle(core: PublisherCore, build_id: str) -> str:
    """Publishes the build if its recipe asks; the publication's state, or
    'skipped' when there is nothing to publish, or 'ignored' when the builder
    does not say the build succeeded: an event is only a prompt (anyone who
    can write the events stream could forge one), the record is the fact."""
    build = await core.build(build_id)
    if build is None or build.state != BuildState.SUCCEEDED:
        log.warning("build.succeeded for build %s, which the builder does not say"
                    " succeeded: ignored", build_id)  # fmt: skip
        return "ignored"
    if build.revoked is not None:  # revoked before this event was handled
        log.info("build %s was revoked: not published", build_id)
        return "ignored"
    recipe = await core.recipe_of(build_id)
    # Channel-following Glance targets wait for their channel (channelpublish).
    publish = on_success(recipe.publish)
    if not publish.targets:
        return "skipped"
    # The build's tenant publishes it: its targets, its artifacts only.
    pub = await core.publish(
        Request(build_id=build_id, publish=publish), publication_id(build_id), build.tenant
    )
    state = pub.state.name.lower()
    log.info("build %s auto-published: %s", build_id, state)
    await core.settle_revoked(build_id)  # revoked while it was being published
    return state


async def _one(core: PublisherCore, msg: Msg) -> None:
    event = from_json(msg.data)
    # Two deliveries of build.succeeded for one build (a duplicate event) may
    # reach two replicas at once: only the one holding the claim publishes.
    try:
        revision = await core.claims.claim(publication_id(event.subject), OWNER, CLAIM_TTL)
    except KilnError as exc:
        log.warning("auto-publish of build %s put off: %s", event.subject, exc)
        await msg.nak(delay=10)
        return
    if revision is None:
        log.info("auto-publish of build %s is under way elsewhere: put off", event.subject)
        await msg.nak(delay=CLAIM_TTL / 2)
        return

    held = revision

    async def renew() -> None:
        nonlocal held
        held = await core.claims.renew(publication_id(event.subject), OWNER, held)

    try:
        async with consumers.in_hand(msg, renew):
            await handle(core, event.subject)
    except (Unavailable, Unauthenticated) as exc:
        # Unauthenticated: this publisher's service token is not (yet) known,
        # e.g. before an operator made it (deploy/k8s/README.md). Later, not lost.
        log.warning("auto-publish of %s put off: %s", event.subject, exc)
        await msg.nak(delay=10)
        return
    except KilnError as exc:
        # Nothing could start (no such cloud, marketplace off...): the record says why.
        log.warning("auto-publish of build %s failed: %s", event.subject, exc)
        with contextlib.suppress(KilnError):
            build = await core.build(event.subject)
            tenant = build.tenant if build is not None else ""
            await core.record_failure(
                publication_id(event.subject), event.subject, str(exc), tenant
            )
    except Exception:
        # A failed target is recorded in the publication; only an unexpected
        # error gets here. It is acked so it does not loop; the log says why.
        log.exception("auto-publish of build %s failed", event.subject)
    finally:
        with contextlib.suppress(KilnError):
            await core.claims.release(publication_id(event.subject))
    await msg.ack()


async def run(core: PublisherCore, js: JetStreamContext) -> None:
    """Takes build.succeeded events one at a time until cancelled."""

    async def one(msg: Msg) -> None:
        await _one(core, msg)

    await jetstream.consume(js, STREAM, CONSUMER, lambda: ensure(js), one, "auto-publish",
                            consumers.FETCH_SECONDS)  # fmt: skip
