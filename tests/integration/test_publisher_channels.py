"""Versions, channel moves and revocation against real servers (NATS, the
storage service, Keystone and Glance): the image version a published image
carries, a channel that moves back showing its build's image again, and a
revoked build's images hidden or deactivated and its entries deprecated.
No builder runs here: the core's transport-free parts are given what its
consumers read from the builder (the build id, tenant and publish section)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from market_support import ENDORSER
from support import await_until, events_about, glance_images

from kiln_client import AsyncStorageClient
from kiln_common.ids import new_id
from kiln_common.proc import run
from kiln_devstack.devservers import Glance, Nats
from kiln_publisher.app import PublisherApp, build
from kiln_publisher.model import channel_publication_id
from kiln_publisher.settings import PublisherSettings
from kiln_publisher.targets import Request
from kiln_recipe.schema import GlancePublish, MarketplacePublish, Publish

pytestmark = pytest.mark.integration


@asynccontextmanager
async def publisher_with_builds(
    tmp_path: Path, nats_url: str, storage_service: Any, clouds_yaml: Path, name: str, count: int
) -> AsyncIterator[tuple[PublisherApp, list[str]]]:
    """A publisher (Glance cloud kiln-a, a local endorser) and count builds'
    image artifacts in storage, labelled as the builder labels them
    (build-id, kiln-version 1-<n>), each a different tiny qcow2."""
    builds = []
    async with storage_service() as (_, address):
        async with AsyncStorageClient(address) as storage:
            for n in range(1, count + 1):
                image = tmp_path / f"{n}.qcow2"
                await run(["qemu-img", "create", "-q", "-f", "qcow2", image, f"{n}M"])
                build_id = new_id()
                labels = {"name": name, "version": "1", "format": "qcow2", "kiln-kind": "image",
                          "build-id": build_id, "kiln-version": f"1-{n}"}  # fmt: skip
                await storage.push(image, labels)
                builds.append(build_id)
        settings = PublisherSettings(
            grpc_bind="127.0.0.1:0", http_port=0, storage=address, nats_url=nats_url,
            keyring_dir=tmp_path / "keyring", endorser_key_dir=tmp_path / "endorsers",
            local_endorser=ENDORSER, default_endorser=ENDORSER, clouds_yaml=clouds_yaml,
            auto_publish=False, shutdown_grace=1.0,
        )  # fmt: skip
        publisher = await build(settings)
        try:
            yield publisher, builds
        finally:
            await publisher.stop()


def only(clouds_yaml: Path, name: str) -> dict[str, Any]:
    (image,) = glance_images(clouds_yaml, name, "kiln-a")
    return dict(image)


async def test_a_published_image_and_entry_carry_the_image_version(
    tmp_path: Path, nats_server: Nats, storage_service: Any, glance: Glance, clouds_yaml: Path
) -> None:
    targets = Publish(
        glance=[GlancePublish(cloud="kiln-a")],
        marketplace=MarketplacePublish(endorser=ENDORSER, valid_for=3600),
    )
    async with publisher_with_builds(
        tmp_path, nats_server.url, storage_service, clouds_yaml, "versioned", 1
    ) as (publisher, (build_id,)):
        pub = await publisher.core.publish(Request(build_id=build_id, publish=targets))
        assert only(clouds_yaml, "versioned-1")["kiln_version"] == "1-1"
        entry = next(r for r in pub.results if r.kind == "marketplace").entry_identifier
        assert (await publisher.core.get_entry(entry)).entry.version == "1-1"


@pytest.mark.parametrize("retire", ["hide", "deactivate"])
async def test_a_channel_moved_back_shows_its_builds_image_again_and_rotation_retires_the_other(
    tmp_path: Path, nats_server: Nats, storage_service: Any, glance: Glance, clouds_yaml: Path,
    retire: str,
) -> None:  # fmt: skip
    name = f"web-stable-{new_id()[-6:]}"
    target = GlancePublish(cloud="kiln-a", name=name, channel="stable", keep=1, retire=retire)
    follows = Publish(glance=[target])
    async with publisher_with_builds(
        tmp_path, nats_server.url, storage_service, clouds_yaml, "chan", 2
    ) as (publisher, (first, second)):

        async def move_to(build_id: str) -> str:
            pub = await publisher.core.publish(
                Request(build_id=build_id, publish=follows),
                channel_publication_id(build_id, "stable"), "", again=True,
            )  # fmt: skip
            (result,) = pub.results
            return result.image_id

        one = await move_to(first)
        two = await move_to(second)
        again = await move_to(first)  # rolled back: the same image, shown again
        images = {i["id"]: i for i in glance_images(clouds_yaml, name, "kiln-a")}
    assert again == one and set(images) == {one, two}
    assert images[one]["os_hidden"] is False and images[one]["kiln_version"] == "1-1"
    assert images[one]["status"] == "active"
    if retire == "hide":
        assert images[two]["os_hidden"] is True
    else:
        assert images[two]["status"] == "deactivated" and images[two]["os_hidden"] is False


@pytest.mark.parametrize(("retire", "how"), [("hide", "hide"), ("delete", "deactivate")])
async def test_revoking_a_build_retires_its_images_and_deprecates_its_entries_once_or_twice(
    tmp_path: Path,
    nats_server: Nats,
    storage_service: Any,
    glance: Glance,
    clouds_yaml: Path,
    retire: str,
    how: str,
) -> None:
    name = f"revoked-{retire}-{new_id()[-6:]}"
    targets = Publish(
        glance=[GlancePublish(cloud="kiln-a", name=name, retire=retire)],  # type: ignore[arg-type]
        marketplace=MarketplacePublish(endorser=ENDORSER, valid_for=3600),
    )
    async with publisher_with_builds(
        tmp_path, nats_server.url, storage_service, clouds_yaml, name, 2
    ) as (publisher, (revoked, kept)):
        core = publisher.core
        pub = await core.publish(Request(build_id=revoked, publish=targets))
        other = await core.publish(Request(build_id=kept, publish=targets))
        image = next(r for r in pub.results if r.kind == "glance").image_id
        entry = next(r for r in pub.results if r.kind == "marketplace").entry_identifier
        other_entry = next(r for r in other.results if r.kind == "marketplace").entry_identifier

        # Another tenant's publication naming the build is not the build's: untouched.
        assert not (await core.revoke_publications(revoked, "someone-else", targets)).images
        done = await core.revoke_publications(revoked, "", targets, "CVE-2026-1")
        assert done.images == [(image, how)] and done.entries == [entry] and not done.failed
        again = await core.revoke_publications(revoked, "", targets, "CVE-2026-1")
        assert again.images == [(image, how)] and not again.failed  # a redelivery: harmless

        images = {i["id"]: i for i in glance_images(clouds_yaml, name, "kiln-a")}
        assert len(images) == 2  # never deleted
        if how == "hide":
            assert images[image]["os_hidden"] is True and images[image]["status"] == "active"
        else:
            assert images[image]["status"] == "deactivated"
        assert all(not i["os_hidden"] and i["status"] == "active"
                   for i_id, i in images.items() if i_id != image)  # fmt: skip
        assert (await core.get_entry(entry)).entry.deprecated
        assert not (await core.get_entry(other_entry)).entry.deprecated

    events = await await_until(
        "the image's revocation announced",
        lambda: _revoked(events_about(nats_server.url, image)),
        30,
    )
    assert events[0]["data"] == {
        "image_id": image, "cloud": "kiln-a", "region": events[0]["data"]["region"],
        "name": name, "how": how, "why": "build revoked", "build_id": revoked,
        "reason": "CVE-2026-1",
    }  # fmt: skip
    deprecated = [e for e in await events_about(nats_server.url, entry)
                  if e["type"] == "entry.deprecated"]  # fmt: skip
    assert len(deprecated) == 1  # deprecating again changes nothing, says nothing


async def _revoked(found: Any) -> list[dict[str, Any]] | None:
    events = [e for e in await found if e["type"] == "image.revoked"]
    return events or None
