"""No lost events: an event published while NATS is away waits in the
durable outbox and reaches the stream once NATS is back, in order, once.
Real nats-server, killed with SIGKILL and started again on its data."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import nats
import pytest

from kiln_common.devservers import Nats, port_of, start_nats, stopping
from kiln_common.events import STREAM, JetStreamPublisher, from_json
from kiln_common.outbox import Outbox

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
