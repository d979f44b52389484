"""The pure rules of Glance publishing: what rotation retires, what an image
is created with, how SDK failures read. (Glance itself: tests/integration.)"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import pytest
from keystoneauth1 import exceptions as ksa

from kiln_common.errors import DataLoss, FailedPrecondition, InvalidArgument, Unavailable
from kiln_publisher.glance import GlanceTarget, ImageSource
from kiln_publisher.glance.api import translate
from kiln_publisher.glance.bridge import Opened, ToThread, from_thread
from kiln_publisher.glance.publisher import _age, _create_body, _in_flight, _validate, _verify
from kiln_publisher.glance.rotation import to_retire


def img(image_id: str, created: str, **extra: Any) -> dict[str, Any]:
    return {"id": image_id, "created_at": created, "kiln_artifact_id": image_id, **extra}


async def nothing() -> AsyncIterator[bytes]:
    yield b""


SOURCE = ImageSource(
    "art-1", "http://storage/a", 3, "s256", "ab" * 64, "qcow2", "debian-12",
    {"os_distro": "debian"}, nothing,
)  # fmt: skip


def test_rotation_retires_all_but_the_newest_keep() -> None:
    images = [img("a", "2026-01-01T00:00:01Z"), img("c", "2026-01-03T00:00:00Z"),
              img("b", "2026-01-02T00:00:00Z")]  # fmt: skip
    assert [i["id"] for i in to_retire(images, "c", 2, "hide")] == ["a"]
    assert [i["id"] for i in to_retire(images, "c", 1, "delete")] == ["b", "a"]
    assert to_retire(images, "c", 0, "hide") == []


def test_rotation_counts_the_new_image_newest_and_skips_foreign_and_retired_ones() -> None:
    images = [
        img("new", "2026-01-01T00:00:00Z"),  # same second as old: still the newest
        img("old", "2026-01-01T00:00:00Z"),
        img("hidden", "2025-01-01T00:00:00Z", os_hidden=True),
        {"id": "theirs", "created_at": "2024-01-01T00:00:00Z"},  # not Kiln's: never touched
    ]
    assert [i["id"] for i in to_retire(images, "new", 1, "hide")] == ["old"]
    assert [i["id"] for i in to_retire(images, "new", 1, "delete")] == ["old", "hidden"]


def test_rotation_neither_counts_nor_retires_half_made_images() -> None:
    images = [img("new", "2026-01-03T00:00:00Z"), img("old", "2026-01-01T00:00:00Z")]
    half = (("q", "queued"), ("imp", "importing"), ("k", "killed"))
    images += [img(i, "2026-01-02T00:00:00Z", status=status) for i, status in half]
    assert [i["id"] for i in to_retire(images, "new", 1, "delete")] == ["old"]
    assert to_retire(images, "new", 2, "delete") == []


def test_a_half_made_image_is_in_flight_while_glance_fills_it() -> None:
    task = {"os_glance_import_task": "t"}
    for status, extra in (("importing", {}), ("saving", {}), ("queued", task),
                          ("uploading", task)):  # fmt: skip
        assert _in_flight({"status": status, **extra})
    for status, extra in (("queued", {}), ("uploading", {}), ("killed", task)):
        assert not _in_flight({"status": status, **extra})
    assert 0 <= _age({"updated_at": datetime.now(UTC).isoformat()}) < 5
    assert _age({"updated_at": "2020-01-01T00:00:00Z"}) > 600
    assert _age({}) == float("inf")  # unknown: stale


def test_create_body_merges_properties_and_marks_the_artifact() -> None:
    target = GlanceTarget("c", properties={"hw_disk_bus": "scsi"}, tags=("t",), min_ram=512)
    body = _create_body(SOURCE, target, "name")
    assert body["os_distro"] == "debian" and body["hw_disk_bus"] == "scsi"
    assert body["kiln_artifact_id"] == "art-1" and body["container_format"] == "bare"
    assert (body["tags"], body["min_ram"], body["visibility"]) == (["t"], 512, "private")


def test_bad_targets_are_refused_before_any_call() -> None:
    for target in (GlanceTarget("c", retire="burn"), GlanceTarget("c", visibility="open"),
                   GlanceTarget("c", keep=-1)):  # fmt: skip
        with pytest.raises(InvalidArgument):
            _validate(target)


def test_verify_wants_glances_sha512_and_size_to_match() -> None:
    good = {"id": "i", "os_hash_algo": "sha512", "os_hash_value": "ab" * 64, "size": 3}
    _verify(good, SOURCE, "here")
    for bad in ({"os_hash_value": "cd" * 64}, {"os_hash_algo": "md5"}, {"size": 4}):
        with pytest.raises(DataLoss, match="deleted"):
            _verify({**good, **bad}, SOURCE, "here")


def test_sdk_failures_read_as_domain_errors() -> None:
    assert isinstance(translate(ksa.ConnectFailure("refused"), "x"), Unavailable)
    assert isinstance(translate(ksa.EndpointNotFound(), "x"), FailedPrecondition)


async def test_an_aborted_body_stops_even_while_the_stream_stalls() -> None:
    async def stalls() -> AsyncIterator[bytes]:
        yield b"x" * (2 << 20)
        await asyncio.Event().wait()
        yield b""

    body = ToThread(stalls(), asyncio.get_running_loop())
    chunks = iter(body)

    def read_two() -> None:
        next(chunks)
        next(chunks)

    reading = asyncio.ensure_future(asyncio.to_thread(read_two))
    await asyncio.sleep(0.2)
    body.abort()
    with pytest.raises(Exception, match="abandoned"):
        await asyncio.wait_for(reading, 5)


async def test_aclose_closes_the_stream_even_with_a_read_in_flight() -> None:
    closed = asyncio.Event()

    async def stalls() -> AsyncIterator[bytes]:
        try:
            yield b"x" * (2 << 20)
            await asyncio.Event().wait()
            yield b""
        finally:
            closed.set()

    body = ToThread(stalls(), asyncio.get_running_loop())
    chunks = iter(body)
    reading = asyncio.ensure_future(asyncio.to_thread(lambda: [next(chunks), next(chunks)]))
    await asyncio.sleep(0.2)  # the second read now waits on the stalled stream
    await asyncio.wait_for(body.aclose(), 5)
    assert closed.is_set()
    with pytest.raises(Exception, match="abandoned"):
        await asyncio.wait_for(reading, 5)


async def test_a_download_opens_at_the_first_read_and_closes_however_it_stops() -> None:
    events: list[str] = []

    async def opener() -> Opened:
        events.append("open")
        return iter([b"a", b"b"]), lambda: events.append("close")

    dropped = from_thread(opener)
    await dropped.aclose()  # dropped unread: nothing was opened, nothing to close
    assert events == []
    partial = from_thread(opener)
    assert await anext(partial) == b"a"
    await partial.aclose()
    assert events == ["open", "close"]
