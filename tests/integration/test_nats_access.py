"""NATS credentials and permissions, on a real nats-server configured from
kiln_common.nats_access (as `kiln up` configures its own): a client without
a user, or with a wrong password, is refused; each service publishes only
what it owns. A build.succeeded from anything but the builder is dropped by
the server before any consumer (the publisher's included) can see it."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import nats
import pytest
from nats.aio.client import Client
from nats.js.api import StreamConfig

from kiln_common.events import STREAM, make_event, subject_for, to_json
from kiln_common.nats_access import ADMIN, SERVICES
from kiln_common.proc import stop_pid
from kiln_devstack.devservers import Nats, start_nats

pytestmark = pytest.mark.integration


@pytest.fixture
def guarded_nats(tmp_path: Path) -> Iterator[Nats]:
    users = {user: secrets.token_urlsafe(18) for user in (ADMIN, *SERVICES)}
    (tmp_path / "logs").mkdir()
    server = start_nats(tmp_path / "nats", tmp_path / "logs" / "nats.log", users=users)
    try:
        yield server
    finally:
        stop_pid(server.pid)


@asynccontextmanager
async def as_user(server: Nats, user: str) -> AsyncIterator[Client]:
    nc = await nats.connect(server.url_for(user), allow_reconnect=False)
    try:
        yield nc
    finally:
        await nc.close()


async def refused_connect(url: str) -> str:
    try:
        nc = await nats.connect(url, allow_reconnect=False, max_reconnect_attempts=0,
                                connect_timeout=2)  # fmt: skip
    except Exception as exc:  # noqa: BLE001 - what the server said is the point
        return str(exc) or type(exc).__name__
    await nc.close()
    return ""


async def test_a_client_without_credentials_or_with_wrong_ones_is_refused(
    guarded_nats: Nats,
) -> None:
    plain = guarded_nats.url.split("@", 1)[1]
    wrong = guarded_nats.url_for("storage").replace("storage:", "storage:x", 1)
    assert await refused_connect(f"nats://{plain}")
    assert await refused_connect(wrong)
    async with as_user(guarded_nats, "storage") as nc:
        assert nc.is_connected


async def published(nc: Client, subject: str, data: bytes) -> bool:
    """Whether JetStream stored it (a refused publish is dropped: no ack)."""
    try:
        await nc.jetstream().publish(subject, data, timeout=1.0)
    except Exception:  # noqa: BLE001 - a timeout: the server dropped it
        return False
    return True


async def test_only_the_builder_publishes_build_events_and_a_forged_one_is_never_stored(
    guarded_nats: Nats,
) -> None:
    async with as_user(guarded_nats, ADMIN) as admin:
        js = admin.jetstream()
        await js.add_stream(StreamConfig(name=STREAM, subjects=["kiln.events.>"]))
        subject = subject_for("build.succeeded")
        stored = {}
        for user in ("storage", "publisher", "builder"):
            event = make_event("build.succeeded", f"b-{user}", {"id": f"b-{user}"}, user)
            async with as_user(guarded_nats, user) as nc:
                stored[user] = await published(nc, subject, to_json(event))
        async with as_user(guarded_nats, "storage") as nc:
            stored["storage's own event"] = await published(
                nc, subject_for("artifact.stored"), b"{}"
            )
        info = await js.stream_info(STREAM, subjects_filter=subject)
    assert stored == {
        "storage": False, "publisher": False, "builder": True, "storage's own event": True,
    }  # fmt: skip
    assert (info.state.subjects or {}).get(subject) == 1, "only the builder's is in the stream"


async def test_only_the_publisher_writes_the_marketplace_and_only_the_builder_its_records(
    guarded_nats: Nats,
) -> None:
    async with as_user(guarded_nats, "publisher") as publisher:
        market = await publisher.jetstream().create_key_value(bucket="KILN_MARKET")
        await market.put("entry", b"signed")
    async with as_user(guarded_nats, "builder") as builder:
        builds = await builder.jetstream().create_key_value(bucket="kiln_builds")
        await builds.put("b1", b"record")
    writes = {}
    for user, bucket in (("builder", "KILN_MARKET"), ("storage", "KILN_MARKET"),
                         ("publisher", "kiln_builds"), ("storage", "kiln_builds")):  # fmt: skip
        async with as_user(guarded_nats, user) as nc:
            kv = await nc.jetstream(timeout=1.0).key_value(bucket)
            try:
                await kv.put("entry" if bucket == "KILN_MARKET" else "b1", b"forged")
                writes[user, bucket] = "written"
            except Exception:  # noqa: BLE001 - dropped by the server: no ack
                writes[user, bucket] = "refused"
            try:
                await nc.jetstream(timeout=1.0).purge_stream(f"KV_{bucket}")
                writes[user, bucket] += ", purged"
            except Exception:  # noqa: BLE001
                pass
    async with as_user(guarded_nats, ADMIN) as admin:
        js = admin.jetstream()
        kept = (
            (await (await js.key_value("KILN_MARKET")).get("entry")).value,
            (await (await js.key_value("kiln_builds")).get("b1")).value,
        )
    assert set(writes.values()) == {"refused"}, writes
    assert kept == (b"signed", b"record")


async def test_only_storage_writes_the_token_bucket_and_nobody_deletes_another_consumer(
    guarded_nats: Nats,
) -> None:
    """A service's NATS user must not mint a token (an admin's, a service's),
    nor take away the publisher's consumer of build.succeeded."""
    from nats.js.api import ConsumerConfig

    async with as_user(guarded_nats, "storage") as storage:
        tokens = await storage.jetstream().create_key_value(bucket="kiln_tokens")
        await tokens.put("t1", b"record")
    async with as_user(guarded_nats, ADMIN) as admin:
        await admin.jetstream().add_stream(StreamConfig(name=STREAM, subjects=["kiln.events.>"]))
    async with as_user(guarded_nats, "publisher") as publisher:
        await publisher.jetstream().add_consumer(
            STREAM, ConsumerConfig(durable_name="kiln-publisher-auto")
        )
    outcomes = {}
    for user in ("builder", "publisher"):
        async with as_user(guarded_nats, user) as nc:
            kv = await nc.jetstream(timeout=1.0).key_value("kiln_tokens")
            try:
                await kv.put("forged", b"admin")
                outcomes[user, "mint"] = "written"
            except Exception:  # noqa: BLE001 - dropped: no ack
                outcomes[user, "mint"] = "refused"
    for user in ("builder", "storage"):
        async with as_user(guarded_nats, user) as nc:
            try:
                await nc.jetstream(timeout=1.0).delete_consumer(STREAM, "kiln-publisher-auto")
                outcomes[user, "delete consumer"] = "deleted"
            except Exception:  # noqa: BLE001
                outcomes[user, "delete consumer"] = "refused"
            try:
                await nc.jetstream(timeout=1.0).purge_stream(STREAM)
                outcomes[user, "purge events"] = "purged"
            except Exception:  # noqa: BLE001
                outcomes[user, "purge events"] = "refused"
    async with as_user(guarded_nats, ADMIN) as admin:
        js = admin.jetstream()
        assert (await js.consumer_info(STREAM, "kiln-publisher-auto")).name
        with pytest.raises(Exception):  # noqa: B017 - not found: never written
            await (await js.key_value("kiln_tokens")).get("forged")
    assert set(outcomes.values()) == {"refused"}, outcomes
