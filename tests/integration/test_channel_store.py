"""Channels and build numbers kept in NATS for real (a nats-server of the
test's own): numbers handed out at once by two clients (as two builder pods)
are never the same and leave no gap; channel moves made at once by two
clients are all kept (compare-and-set), each in its history; a tenant's
channels are not another's."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import nats
import pytest

from kiln_builder.service.channels import rules
from kiln_builder.service.channels.store import ChannelStore
from kiln_common.builds import Build
from kiln_common.channels import Channel
from kiln_devstack.devservers import Nats

pytestmark = pytest.mark.integration


async def test_two_pods_never_hand_out_the_same_build_number(nats_server: Nats) -> None:
    clients = [await nats.connect(nats_server.url) for _ in range(2)]
    try:
        stores = [await ChannelStore.open(c.jetstream()) for c in clients]
        numbers = await asyncio.gather(
            *(stores[n % 2].next_number("team-a", "web") for n in range(30))
        )
        assert sorted(numbers) == list(range(1, 31))
        assert await stores[0].next_number("team-b", "web") == 1  # per tenant
        assert await stores[1].next_number("team-a", "db") == 1  # and per name
    finally:
        for c in clients:
            await c.close()


async def test_moves_made_at_once_are_all_kept_in_the_history(nats_server: Nats) -> None:
    clients = [await nats.connect(nats_server.url) for _ in range(2)]
    try:
        stores = [await ChannelStore.open(c.jetstream()) for c in clients]

        async def set_to(n: int) -> None:
            build = Build(id=f"b{n:02}", image_version=f"1.0-{n}")

            def change(channels: list[Channel]) -> bool:
                ch = rules.channel_of(channels, "web", "candidate" if n % 2 else "stable")
                return rules.move(ch, build, "set", "test", datetime.now(UTC))

            await stores[n % 2].mutate("team-a", "web", change)

        await asyncio.gather(*(set_to(n) for n in range(20)))
        found = {c.channel: c for c in await stores[0].channels("team-a", "web")}
        assert sorted(found) == ["candidate", "stable"]
        moved = sorted(m.build_id for c in found.values() for m in c.history)
        assert moved == [f"b{n:02}" for n in range(20)]
        assert await stores[1].channels("team-b", "web") == []
    finally:
        for c in clients:
            await c.close()
