"""No lost events: an event published while NATS is away waits in the
durable outbox and reaches the stream once NATS is back, in order, once.
Real nats-server, killed with SIGKILL and started again on its data."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path
from typing import TYPE_CHECKING

import nats
import pytest

from kiln_client.storage import AsyncStorageClient
from kiln_common.events import STREAM, JetStreamPublisher, from_json
from kiln_common.outbox import Outbox
from kiln_devstack.devservers import Nats, port_of, start_nats, stopping

if TYPE_CHECKING:
    from conftest import StorageFactory

pytestmark = pytest.mark.integration


async def stored_events(url: str) -> list[tuple[str, str]]:
    """(type, subject) of every event on the stream, in stream order."""
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        info = await js.stream_info(STREAM)
        found = []
        for seq in range(info.state.first_seq, info.state.last_seq + 1):
            event = from_json((await js.get_msg(STREAM, seq)).data or b"")
            found.append((event.type, event.subject))
        return found
    finally:
        await nc.close()


async def test_events_published_while_nats_is_away_arrive_in_order_once(
    tmp_path: Path, nats_server: Nats
) -> None:
    publisher = await JetStreamPublisher.connect(
        nats_server.url, "test/outbox", outbox_dir=tmp_path / "outbox"
    )
    try:
        await publisher.publish("build.queued", "b1", {"n": 0})
        os.kill(nats_server.pid, signal.SIGKILL)
        for n in range(1, 4):
            await publisher.publish("build.step", "b1", {"n": n})  # returns: kept
        assert len(publisher.outbox) == 3
        # Kept on disk, so a publisher that dies now would not lose them.
        assert len(list((tmp_path / "outbox").rglob("*.event"))) == 3
        again = start_nats(
            tmp_path / "nats", tmp_path / "nats-2.log",
            port=port_of(nats_server.url), monitor=port_of(nats_server.monitor),
        )  # fmt: skip
        with stopping(again.pid):
            assert await publisher.flush(60.0), "the outbox was not sent"
            await publisher.publish("build.succeeded", "b1", {"n": 4})
            events = await stored_events(again.url)
            assert events == [
                ("build.queued", "b1"),
                ("build.step", "b1"),
                ("build.step", "b1"),
                ("build.step", "b1"),
                ("build.succeeded", "b1"),
            ]
    finally:
        await asyncio.wait_for(publisher.close(), 30)


async def test_a_new_publisher_sends_what_a_dead_one_left(
    tmp_path: Path, nats_server: Nats
) -> None:
    dead = Outbox(tmp_path / "outbox", "host:1")
    from kiln_common.events import make_event, subject_for, to_json

    event = make_event("artifact.stored", "a1", {}, "test")
    dead.add(event.id, subject_for("artifact.stored"), to_json(event))
    dead.close()
    publisher = await JetStreamPublisher.connect(
        nats_server.url, "host:2", outbox_dir=tmp_path / "outbox"
    )
    try:
        assert await publisher.flush(30.0)
        assert await stored_events(nats_server.url) == [("artifact.stored", "a1")]
    finally:
        await publisher.close()


async def test_the_storage_service_keeps_its_events_on_disk_while_nats_is_away(
    tmp_path: Path, storage_service: StorageFactory
) -> None:
    """The storage service's outbox is the same durable one: an artifact stored
    while NATS is down leaves its event in OUTBOX_DIR, and whoever takes that
    directory next sends it once NATS is back, even after storage is gone."""
    nats_server = start_nats(tmp_path / "nats", tmp_path / "nats.log")
    outbox = tmp_path / "outbox"
    try:
        async with storage_service(nats_url=nats_server.url, outbox_dir=outbox) as (_, address):
            os.kill(nats_server.pid, signal.SIGKILL)
            data = tmp_path / "blob"
            data.write_bytes(b"kept while NATS is away")
            async with AsyncStorageClient(address) as client:
                stored = await client.push(data, {"name": "x"})
            assert [p.name for p in outbox.rglob("*.event")], "no event kept on disk"
        # Storage has stopped for good; NATS comes back on its data.
        nats_server = start_nats(tmp_path / "nats", tmp_path / "nats.log",
                                 port=port_of(nats_server.url))  # fmt: skip
        publisher = await JetStreamPublisher.connect(nats_server.url, "next", outbox_dir=outbox)
        try:
            assert await publisher.flush(30.0)
        finally:
            await publisher.close()
        assert ("artifact.stored", stored.id) in await stored_events(nats_server.url)
        assert list(outbox.rglob("*.event")) == []
    finally:
        with stopping(nats_server.pid):
            pass
