"""The publisher's expiry sweep against real servers (NATS, the storage
service, Keystone and Glance): an entry past its validity is marked expired and
the Glance image of its artifact is retired as the publisher is configured."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import nats
import pytest
from market_support import ENDORSER
from support import await_until, events_about, glance_images

from kiln_api.storage.v1 import storage_pb2 as spb
from kiln_client import AsyncStorageClient
from kiln_common import jetstream
from kiln_common.ids import new_id
from kiln_common.proc import run
from kiln_devstack.devservers import Glance, Nats
from kiln_publisher.app import PublisherApp, build, sweep_once
from kiln_publisher.core import PUBLICATIONS_BUCKET
from kiln_publisher.model import DONE, PENDING, RUNNING, record_key, record_of
from kiln_publisher.settings import PublisherSettings
from kiln_publisher.targets import Request
from kiln_recipe.schema import GlancePublish, MarketplacePublish, Publish

pytestmark = pytest.mark.integration


@asynccontextmanager
async def published_setup(
    tmp_path: Path, nats_url: str, storage_service: Any, clouds_yaml: Path, name: str
) -> AsyncIterator[tuple[PublisherApp, spb.Artifact]]:
    """A publisher (Glance cloud kiln-a, a local endorser) and a stored qcow2
    named name (version 1)."""
    image = tmp_path / "image.qcow2"
    await run(["qemu-img", "create", "-q", "-f", "qcow2", image, "16M"])
    async with storage_service() as (_, address):
        async with AsyncStorageClient(address) as storage:
            labels = {"name": name, "version": "1", "format": "qcow2", "kiln-kind": "image"}
            artifact = await storage.push(image, labels)
        settings = PublisherSettings(
            grpc_bind="127.0.0.1:0", http_port=0, storage=address, nats_url=nats_url,
            keyring_dir=tmp_path / "keyring", endorser_key_dir=tmp_path / "endorsers",
            local_endorser=ENDORSER, default_endorser=ENDORSER, clouds_yaml=clouds_yaml,
            auto_publish=False, retire_action="hide", shutdown_grace=1.0,
        )  # fmt: skip
        publisher = await build(settings)
        try:
            yield publisher, artifact
        finally:
            await publisher.stop()


TARGETS = Publish(
    glance=[GlancePublish(cloud="kiln-a")],
    marketplace=MarketplacePublish(endorser=ENDORSER, valid_for=3600),
)


async def test_a_publication_is_done_only_once_every_target_is(
    tmp_path: Path, nats_server: Nats, storage_service: Any, glance: Glance, clouds_yaml: Path
) -> None:
    nc = await nats.connect(nats_server.url)
    try:
        records = await jetstream.key_value(nc.jetstream(), PUBLICATIONS_BUCKET)
        publication = new_id()
        watcher = await records.watch(record_key(publication))
        async with published_setup(
            tmp_path, nats_server.url, storage_service, clouds_yaml, "done-once"
        ) as (
            publisher,
            artifact,
        ):
            request = Request(artifact_id=artifact.id, publish=TARGETS)
            await publisher.core.publish(request, publication)
        saved = []
        while not saved or saved[-1].state != DONE:
            update = await watcher.updates(timeout=10)
            if update is not None:
                saved.append(record_of(update.value or b""))
        await watcher.stop()
    finally:
        await nc.close()
    # Both targets are recorded before either runs; until the last is done, the
    # publication is not.
    assert [(r.kind, r.state) for r in saved[0].results] == [
        ("glance", PENDING),
        ("marketplace", PENDING),
    ]
    assert [p.state for p in saved[:-1]] == [PENDING] + [RUNNING] * (len(saved) - 2)


async def test_the_sweep_expires_an_entry_and_hides_its_glance_image_announcing_each_step(
    tmp_path: Path, nats_server: Nats, storage_service: Any, glance: Glance, clouds_yaml: Path
) -> None:
    async with published_setup(
        tmp_path, nats_server.url, storage_service, clouds_yaml, "sweep"
    ) as (
        publisher,
        artifact,
    ):
        pub = await publisher.core.publish(Request(artifact_id=artifact.id, publish=TARGETS))
        glanced = next(r for r in pub.results if r.kind == "glance")
        entry = next(r for r in pub.results if r.kind == "marketplace").entry_identifier
        assert glance_images(clouds_yaml, "sweep-1", "kiln-a")[0]["os_hidden"] is False

        await sweep_once(publisher.core, "hide", now=datetime.now(UTC) + timedelta(hours=2))
        (shown,) = glance_images(clouds_yaml, "sweep-1", "kiln-a")
        assert shown["id"] == glanced.image_id and shown["os_hidden"] is True
        swept = await publisher.core.get_entry(entry)
        assert swept.entry.expired

    # The image's life, announced: published, then retired by the sweep.
    events = await await_until(
        "the image's two events",
        lambda: _two(events_about(nats_server.url, glanced.image_id)),
        30,
    )
    assert [e["type"] for e in events] == ["image.published", "image.retired"]
    published, retired = (e["data"] for e in events)
    assert published["artifact_id"] == artifact.id and published["name"] == "sweep-1"
    assert (published["cloud"], published["image_id"]) == ("kiln-a", glanced.image_id)
    assert published["method"] in ("web-download", "glance-direct")
    assert retired == {
        "image_id": glanced.image_id, "cloud": "kiln-a", "region": published["region"],
        "name": "sweep-1", "how": "hide", "why": "entry expired",
    }  # fmt: skip


async def _two(found: Awaitable[list[dict[str, Any]]]) -> list[dict[str, Any]] | None:
    events = await found
    return events if len(events) >= 2 else None
