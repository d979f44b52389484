"""Publishing to a real Glance with real Keystone (session fixtures in
tests/conftest.py): each test asserts what Glance holds afterwards."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import http.server
import secrets
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from support import ImageServer, await_until, glance_images

from kiln_common.errors import DataLoss, NotFound, Unavailable
from kiln_common.proc import run_sync
from kiln_common.retry import RetryPolicy
from kiln_devstack.devservers import (
    Glance,
    Keystone,
    free_port,
    register_image_endpoint,
    write_clouds_yaml,
    write_noauth_clouds_yaml,
)
from kiln_publisher.glance import GlancePublisher, GlanceTarget, ImageSource
from kiln_publisher.glance.api import GlanceApi, config
from kiln_publisher.glance.publisher import _create_body

pytestmark = pytest.mark.integration

QUICK = RetryPolicy(attempts=3, initial=0.1, maximum=0.5, deadline=None)


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ImageServer]:
    """Small qcow2 files (each size different bytes) served over HTTP with Range."""
    root = tmp_path_factory.mktemp("qcow2")
    for mib in (16, 32, 48, 64):
        run_sync(["qemu-img", "create", "-q", "-f", "qcow2", root / f"{mib}.qcow2", f"{mib}M"])
    with ImageServer(root) as server:
        yield server


@pytest.fixture
def publisher(clouds_yaml: Path, glance: Glance) -> GlancePublisher:
    return GlancePublisher(clouds_yaml, QUICK, poll=0.1)


def source(images: ImageServer, mib: int = 16, **changes: Any) -> ImageSource:
    """An artifact whose bytes stream over HTTP, as storage serves them."""
    data = (images.root / f"{mib}.qcow2").read_bytes()
    url = f"{images.url}/{mib}.qcow2"

    async def stream() -> AsyncIterator[bytes]:
        async with aiohttp.ClientSession() as session, session.get(url) as reply:
            reply.raise_for_status()
            async for chunk in reply.content.iter_chunked(65536):
                yield chunk

    fields: dict[str, Any] = {
        "artifact_id": f"art-{secrets.token_hex(4)}",
        "url": url,
        "size": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
        "sha512": hashlib.sha512(data).hexdigest(),
        "disk_format": "qcow2",
        "name": f"test-{secrets.token_hex(4)}",
        "properties": {"os_distro": "debian", "os_version": "12", "architecture": "x86_64"},
        "stream": stream,
    }
    return ImageSource(**{**fields, **changes})


async def test_publish_web_download_properties_hash_idempotent_and_open(
    publisher: GlancePublisher, images: ImageServer, clouds_yaml: Path
) -> None:
    art = source(images)
    target = GlanceTarget(
        "kiln-a", tags=("kiln", "nightly"), properties={"hw_disk_bus": "virtio"}, min_disk=1,
        min_ram=256,
    )  # fmt: skip
    first = await publisher.publish(art, target)
    assert first.method == "web-download"
    assert images.gets("16.qcow2"), "Glance did not fetch the artifact's URL"
    [image] = glance_images(clouds_yaml, art.name)
    assert image["id"] == first.image_id and image["status"] == "active"
    assert (image["disk_format"], image["container_format"]) == ("qcow2", "bare")
    assert (image["os_hash_algo"], image["os_hash_value"]) == ("sha512", art.sha512)
    assert image["visibility"] == "private" and sorted(image["tags"]) == ["kiln", "nightly"]
    assert (image["min_disk"], image["min_ram"]) == (1, 256)
    assert image["os_distro"] == "debian" and image["hw_disk_bus"] == "virtio"
    assert image["kiln_artifact_id"] == art.artifact_id

    again = await publisher.publish(art, target)
    assert (again.image_id, again.method) == (first.image_id, "existing")
    assert len(glance_images(clouds_yaml, art.name)) == 1

    size, digest, chunks = await publisher.open_image("kiln-a", None, first.image_id)
    data = b"".join([chunk async for chunk in chunks])
    assert size == art.size == len(data) and digest == art.sha512
    assert hashlib.sha512(data).hexdigest() == digest


async def test_unreachable_url_falls_back_to_glance_direct(
    publisher: GlancePublisher, images: ImageServer, clouds_yaml: Path
) -> None:
    art = source(images, url=f"http://127.0.0.1:{free_port()}/gone.qcow2")
    done = await publisher.publish(art, GlanceTarget("kiln-a"))
    assert done.method == "glance-direct"
    [image] = glance_images(clouds_yaml, art.name)  # the failed import's image is gone
    assert image["id"] == done.image_id and image["os_hash_value"] == art.sha512


async def test_import_disabled_uses_the_legacy_upload(
    publisher: GlancePublisher, images: ImageServer, clouds_yaml: Path, glance_legacy: Glance
) -> None:
    art = source(images, 32)
    done = await publisher.publish(art, GlanceTarget("kiln-a", "RegionTwo"))
    assert done.method == "upload"
    [image] = glance_images(clouds_yaml, art.name, region="RegionTwo")
    assert image["status"] == "active" and image["os_hash_value"] == art.sha512
    assert not glance_images(clouds_yaml, art.name)  # RegionOne's Glance has none


async def test_rotation_keep_two_hides_the_oldest(
    publisher: GlancePublisher, images: ImageServer, clouds_yaml: Path
) -> None:
    name = f"rotated-{secrets.token_hex(4)}"
    target = GlanceTarget("kiln-a", name=name, keep=2, retire="hide")
    done = []
    for mib in (16, 32, 48):
        done.append(await publisher.publish(source(images, mib, url=""), target))
        await asyncio.sleep(1.0)  # created_at has one-second resolution
    assert [d.retired for d in done] == [(), (), (done[0].image_id,)]
    state = {i["id"]: i["os_hidden"] for i in glance_images(clouds_yaml, name)}
    assert state == {done[0].image_id: True, done[1].image_id: False, done[2].image_id: False}


async def test_rotation_delete_and_retire_deactivate(
    publisher: GlancePublisher, images: ImageServer, clouds_yaml: Path
) -> None:
    name = f"rotated-{secrets.token_hex(4)}"
    target = GlanceTarget("kiln-a", name=name, keep=1, retire="delete")
    old = await publisher.publish(source(images, 16, url=""), target)
    await asyncio.sleep(1.0)
    new = await publisher.publish(source(images, 32, url=""), target)
    assert new.retired == (old.image_id,)
    assert [i["id"] for i in glance_images(clouds_yaml, name)] == [new.image_id]

    await publisher.retire("kiln-a", None, new.image_id, "deactivate")
    [image] = glance_images(clouds_yaml, name)
    assert image["status"] == "deactivated"


async def test_hash_mismatch_leaves_no_image(
    publisher: GlancePublisher, images: ImageServer, clouds_yaml: Path
) -> None:
    art = source(images, url="", sha512="0" * 128)
    with pytest.raises(DataLoss, match="SHA-512"):
        await publisher.publish(art, GlanceTarget("kiln-a"))
    assert glance_images(clouds_yaml, art.name) == []


async def test_stream_failing_mid_upload_leaves_no_image(
    publisher: GlancePublisher, images: ImageServer, clouds_yaml: Path
) -> None:
    good = source(images, 64, url="")

    async def broken() -> AsyncIterator[bytes]:
        yield b"\0" * 65536
        raise Unavailable("storage went away")

    art = source(images, 64, url="", stream=broken, name=good.name)
    with pytest.raises(Unavailable, match="storage went away"):
        await publisher.publish(art, GlanceTarget("kiln-a"))
    assert glance_images(clouds_yaml, art.name) == []


async def test_cancelled_publication_leaves_no_image(
    publisher: GlancePublisher, images: ImageServer, clouds_yaml: Path
) -> None:
    stalled = asyncio.Event()

    async def stalls() -> AsyncIterator[bytes]:
        yield b"\0" * (2 << 20)
        stalled.set()
        await asyncio.Event().wait()  # storage hangs
        yield b""

    art = source(images, url="", stream=stalls)
    task = asyncio.create_task(publisher.publish(art, GlanceTarget("kiln-a")))
    await asyncio.wait_for(stalled.wait(), 30)
    made = await await_until("the image", lambda: glance_images(clouds_yaml, art.name), 30)
    assert made[0]["status"] in ("queued", "uploading")
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert glance_images(clouds_yaml, art.name) == []


def left_by_a_dead_pod(clouds_yaml: Path, art: ImageSource, target: GlanceTarget) -> str:
    """An image created as the publisher creates it, then abandoned: what a
    pod killed mid-publication leaves (its cleanup never ran)."""
    glance = GlanceApi(config(clouds_yaml), target.cloud, "RegionOne")
    return str(glance.create(_create_body(art, target, art.name))["id"])


async def test_a_dead_pods_queued_image_is_deleted_and_the_artifact_published_once(
    publisher: GlancePublisher, images: ImageServer, clouds_yaml: Path
) -> None:
    art, target = source(images, url=""), GlanceTarget("kiln-a", keep=1, retire="delete")
    queued = left_by_a_dead_pod(clouds_yaml, art, target)
    done = await publisher.publish(art, target)
    assert done.method != "existing" and done.retired == ()  # rotation did not count it
    [image] = glance_images(clouds_yaml, art.name)
    assert image["id"] == done.image_id != queued and image["status"] == "active"


@contextlib.contextmanager
def slow_server(path: Path, delay: float) -> Iterator[tuple[str, list[str]]]:
    """path served over HTTP after delay seconds, and the GETs it answered:
    an import that stays `importing` long enough to be found so."""
    gets: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            gets.append(self.path)
            time.sleep(delay)
            data = path.read_bytes()
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/{path.name}", gets
    finally:
        httpd.shutdown()


async def test_an_import_a_dead_pod_started_is_adopted_not_uploaded_again(
    publisher: GlancePublisher, images: ImageServer, clouds_yaml: Path
) -> None:
    art, target = source(images), GlanceTarget("kiln-a")
    importing = left_by_a_dead_pod(clouds_yaml, art, target)
    glance = GlanceApi(config(clouds_yaml), "kiln-a", "RegionOne")
    with slow_server(images.root / "16.qcow2", 1.5) as (url, gets):
        glance.start_import(importing, "web-download", url)  # then the pod died
        await await_until("importing", lambda: gets, 10)  # Glance is fetching: importing
        assert glance.get(importing)["status"] == "importing"
        done = await publisher.publish(art, target)
    assert (done.image_id, done.method) == (importing, "existing")
    [image] = glance_images(clouds_yaml, art.name)
    assert image["status"] == "active" and image["os_hash_value"] == art.sha512
    assert len(gets) == 1  # the dead pod's import fetched it; nothing sent it again


async def test_glance_or_keystone_down_fails_clearly_after_bounded_retries(
    images: ImageServer, keystone: Keystone, tmp_path: Path
) -> None:
    register_image_endpoint(keystone, "RegionDown", f"http://127.0.0.1:{free_port()}")
    down = write_clouds_yaml(tmp_path / "down.yaml", keystone, ("RegionDown",))
    publisher = GlancePublisher(down, QUICK)
    start = time.monotonic()
    with pytest.raises(Unavailable, match="cannot reach the cloud"):
        await publisher.publish(source(images), GlanceTarget("kiln-a", "RegionDown"))
    assert time.monotonic() - start < 20

    dead = Keystone(f"http://127.0.0.1:{free_port()}/v3", "x", 0, {"kiln-a": ("kiln-a", "x")})
    offline = GlancePublisher(
        write_clouds_yaml(tmp_path / "dead.yaml", dead, ("RegionOne",)), QUICK
    )
    with pytest.raises(Unavailable, match="cannot reach the cloud"):
        await offline.publish(source(images), GlanceTarget("kiln-a"))


async def test_projects_cannot_see_each_others_private_images(
    publisher: GlancePublisher, images: ImageServer, clouds_yaml: Path
) -> None:
    art = source(images, url="")
    mine = await publisher.publish(art, GlanceTarget("kiln-a"))
    with pytest.raises(NotFound):
        await publisher.open_image("kiln-b", None, mine.image_id)
    assert glance_images(clouds_yaml, art.name, "kiln-b") == []
    theirs = await publisher.publish(art, GlanceTarget("kiln-b"))  # not kiln-a's "existing"
    assert theirs.method != "existing" and theirs.image_id != mine.image_id
    assert [i["id"] for i in glance_images(clouds_yaml, art.name, "kiln-a")] == [mine.image_id]


async def test_a_glance_without_keystone_gets_one_image_per_artifact_and_rotates(
    glance_noauth: Glance, images: ImageServer, tmp_path: Path
) -> None:
    """clouds.yaml `auth_type: none`: no project to ask for, so the look-up
    for an artifact's image and rotation by name must not filter on one
    (they asked for owner None, and publishing twice made two images)."""
    clouds = write_noauth_clouds_yaml(tmp_path / "clouds.yaml", "standalone", glance_noauth)
    publisher = GlancePublisher(clouds, QUICK, poll=0.1)
    name = f"standalone-{secrets.token_hex(4)}"
    target = GlanceTarget("standalone", name=name, keep=1, retire="hide")
    art = source(images, 16, url="")
    first = await publisher.publish(art, target)
    again = await publisher.publish(art, target)
    assert (again.image_id, again.method) == (first.image_id, "existing")
    await asyncio.sleep(1.0)  # created_at has one-second resolution
    newer = await publisher.publish(source(images, 32, url=""), target)
    assert newer.retired == (first.image_id,)
    api = GlanceApi(config(clouds), "standalone", None)
    listed = api.list(name=name) + api.list(name=name, os_hidden="true")
    state = {i["id"]: i["os_hidden"] for i in listed}
    assert state == {first.image_id: True, newer.image_id: False}
