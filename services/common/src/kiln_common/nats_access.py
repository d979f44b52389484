"""Who may write what in NATS: one user per Kiln service, and what each may
not publish because another service owns it. The table is the one place
that says so: `kiln up` writes its nats-server's users from it, and
deploy/k8s/base/nats carries the same lists (tests/unit/test_nats_access.py
checks they agree).

NATS checks permissions per publish subject. So a user is denied, for each
stream another service owns, the stream's own subjects (its events, queue,
KV keys, object chunks) and the JetStream API subjects that change it or
take from it (update, delete, purge, message delete, consumers, acks). Reading
(stream info, KV gets) stays open to every service; creating the shared
streams (KILN_EVENTS, the token bucket) too. A client without a user and
password is refused by the server, and `admin` (the operator's, and the
tests') has no limits."""

from __future__ import annotations

import json
from dataclasses import dataclass

SERVICES = ("builder", "storage", "publisher")
AUTO_PUBLISH = "kiln-publisher-auto"  # the publisher's consumer (kiln_publisher.autopublish)
CHANNEL_PUBLISH = "kiln-publisher-channels"  # the publisher's (kiln_publisher.channelpublish)
REVOKE = "kiln-publisher-revoke"  # the publisher's (kiln_publisher.revoke)
SCHEDULE_OUTCOMES = "kiln-schedule-outcomes"  # the builder's (service.schedules.outcomes)
ADMIN = "admin"


def _events_consumer(name: str) -> tuple[str, ...]:
    """A service's own durable consumer on the shared events stream: the API
    subjects that make, delete, pull from and ack it."""
    return tuple(
        api.format(s=f"KILN_EVENTS.{name}")
        for api in ("$JS.API.CONSUMER.DURABLE.CREATE.{s}", "$JS.API.CONSUMER.DELETE.{s}",
                    "$JS.API.CONSUMER.CREATE.{s}", "$JS.API.CONSUMER.CREATE.{s}.>",
                    "$JS.API.CONSUMER.MSG.NEXT.{s}", "$JS.API.CONSUMER.PAUSE.{s}",
                    "$JS.API.CONSUMER.UNPIN.{s}", "$JS.ACK.{s}.>")
    )  # fmt: skip


@dataclass(frozen=True)
class Owned:
    subjects: tuple[str, ...]  # plain subjects only this service publishes
    streams: tuple[str, ...]  # JetStream streams only this service changes


OWNED: dict[str, Owned] = {
    "builder": Owned(
        subjects=(
            "kiln.events.build.>",  # build.queued/started/step/succeeded/failed/cancelled
            "kiln.build-queue", "kiln.build-queue.>",
            "kiln.build-cancel.>",
            "kiln.build-updates.>",
            "$KV.kiln_builds.>", "$KV.kiln_build_keys.>", "$KV.kiln_build_results.>",
            "$O.kiln_recipes.>",
            # Schedules: their clocks and ticks, records, runs, recipes, events.
            "kiln.schedules.>", "kiln.events.schedule.>",
            "$KV.kiln_schedules.>", "$KV.kiln_schedule_runs.>", "$O.kiln_schedule_recipes.>",
            *_events_consumer(SCHEDULE_OUTCOMES),
            # Channels: their pointers and build numbers, and their moves.
            "$KV.kiln_channels.>", "kiln.events.channel.>",
        ),
        streams=(
            "KILN_BUILD_QUEUE", "KILN_BUILD_UPDATES", "KV_kiln_builds", "KV_kiln_build_keys",
            "KV_kiln_build_results", "OBJ_kiln_recipes", "KILN_SCHEDULES", "KV_kiln_schedules",
            "KV_kiln_schedule_runs", "OBJ_kiln_schedule_recipes", "KV_kiln_channels",
        ),
    ),
    # Storage alone writes the token bucket (the Tokens API's create and
    # revoke are storage's): no other service's user can mint a token.
    "storage": Owned(
        subjects=("kiln.events.artifact.>", "$KV.kiln_tokens.>"), streams=("KV_kiln_tokens",)
    ),
    "publisher": Owned(
        subjects=(
            "kiln.events.image.>", "kiln.events.entry.>",
            "$KV.KILN_MARKET.>", "$KV.KILN_MARKET_NEWEST.>", "$KV.KILN_MARKET_OWNERS.>",
            "$KV.KILN_PUBLICATIONS.>",
            # Its durable consumers on the shared events stream: build.succeeded,
            # channel.moved, build.revoked.
            *_events_consumer(AUTO_PUBLISH),
            *_events_consumer(CHANNEL_PUBLISH),
            *_events_consumer(REVOKE),
        ),
        streams=(
            "KV_KILN_MARKET", "KV_KILN_MARKET_NEWEST", "KV_KILN_MARKET_OWNERS",
            "KV_KILN_PUBLICATIONS",
        ),
    ),
}  # fmt: skip

# What changes a stream, or takes from it, on the JetStream API.
_STREAM_API = (
    "$JS.API.STREAM.CREATE.{s}", "$JS.API.STREAM.UPDATE.{s}", "$JS.API.STREAM.DELETE.{s}",
    "$JS.API.STREAM.PURGE.{s}", "$JS.API.STREAM.MSG.DELETE.{s}",
    "$JS.API.CONSUMER.CREATE.{s}", "$JS.API.CONSUMER.CREATE.{s}.>",
    "$JS.API.CONSUMER.DURABLE.CREATE.{s}.>", "$JS.API.CONSUMER.DELETE.{s}.>",
    "$JS.API.CONSUMER.MSG.NEXT.{s}.>", "$JS.ACK.{s}.>",
    "$JS.API.CONSUMER.PAUSE.{s}.>", "$JS.API.CONSUMER.UNPIN.{s}.>", "$JS.API.STREAM.RESTORE.{s}",
)  # fmt: skip
# The events stream is every service's to write to, and no service's to
# change, empty or delete from (its creation stays open: any may start first).
SHARED_STREAMS = ("KILN_EVENTS",)
_SHARED_API = (
    "$JS.API.STREAM.UPDATE.{s}", "$JS.API.STREAM.DELETE.{s}", "$JS.API.STREAM.PURGE.{s}",
    "$JS.API.STREAM.MSG.DELETE.{s}", "$JS.API.STREAM.RESTORE.{s}",
)  # fmt: skip


def denied(service: str) -> list[str]:
    """The subjects the service's user may not publish to: what the others own."""
    out = [api.format(s=s) for s in SHARED_STREAMS for api in _SHARED_API]
    for other, owned in OWNED.items():
        if other == service:
            continue
        out.extend(owned.subjects)
        out.extend(api.format(s=s) for s in owned.streams for api in _STREAM_API)
    return out


def server_config(passwords: dict[str, str], *, variables: bool = False) -> str:
    """The `authorization` block of a nats-server config: admin and each
    service, each with its password (given as {user: password}). With
    variables, the passwords are names of environment variables ("$NAME"),
    which nats-server reads only unquoted (the Kubernetes deployment's, from
    a Secret)."""
    lines = ["authorization {", "  users = ["]
    for user, password in passwords.items():
        secret = password if variables else json.dumps(password)
        entry = f"    {{user: {json.dumps(user)}, password: {secret}"
        if user != ADMIN:
            deny = ", ".join(json.dumps(subject) for subject in denied(user))
            entry += f", permissions: {{publish: {{deny: [{deny}]}}}}"
        lines.append(entry + "}")
    lines += ["  ]", "}"]
    return "\n".join(lines) + "\n"
