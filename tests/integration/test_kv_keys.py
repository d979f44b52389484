"""Listing a key-value bucket's keys against a real nats-server. nats-py's own
KeyValue.keys() now and then finds a full bucket empty (its watcher can signal
the end before the first key: nats-io/nats.py#842); a restarted publisher then
listed no marketplace entries."""

from __future__ import annotations

import nats
import pytest

from kiln_common import jetstream
from kiln_devstack.devservers import Nats

pytestmark = pytest.mark.integration


async def test_a_bucket_lists_its_live_keys_every_time_and_an_empty_one_none(
    nats_server: Nats,
) -> None:
    nc = await nats.connect(nats_server.url)
    try:
        js = nc.jetstream()
        empty = await jetstream.key_value(js, "kiln_test_empty")
        assert await jetstream.kv_keys(js, "kiln_test_empty") == []
        await empty.put("gone", b"x")
        await empty.delete("gone")
        assert await jetstream.kv_keys(js, "kiln_test_empty") == []  # only a delete marker

        kv = await jetstream.key_value(js, "kiln_test_keys")
        for n in range(20):
            await kv.put(f"k{n:02}", b"v")
        await kv.put("k00", b"again")  # its newest write is now the last
        await kv.delete("k05")
        await kv.purge("k06")
        want = [f"k{n:02}" for n in range(1, 20) if n not in (5, 6)] + ["k00"]
        # Each listing is a fresh consumer, as after a restart: none may miss a key.
        for _ in range(50):
            assert await jetstream.kv_keys(js, "kiln_test_keys") == want
    finally:
        await nc.close()
