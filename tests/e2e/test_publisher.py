"""The publisher through `kiln up`, against a real Keystone and Glance (PyPI
packages under gunicorn on loopback) and the stack's real NATS and storage:
`kiln publish BUILD --glance CLOUD --marketplace`, idempotent when asked
again, the entry verified offline with `kiln market verify --file`, and a
build whose recipe has publish: published automatically once although its
build.succeeded event arrives twice; the builder's marketplace and glance
bases fetched through the publisher. Images are small qcow2 files pushed
straight to storage, labelled as a build's artifacts: no image is built."""

from __future__ import annotations

import asyncio
import json
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import nats
import openstack
import pytest
from openstack.config.loader import OpenStackConfig
from support import kill_part, kiln, kiln_up, restart_dead_parts, scratch, wait_until

from kiln_api.builder.v1 import builder_pb2 as bpb
from kiln_builder.base.fetch import fetch_base
from kiln_builder.service.records import BUILDS_BUCKET
from kiln_client import PublisherClient, StorageClient, wire
from kiln_client.credentials import acting_for
from kiln_common import jetstream
from kiln_common.builds import Build, BuildState
from kiln_common.errors import NotFound
from kiln_common.events import make_event, subject_for, to_json
from kiln_common.home import LOCAL_TENANT
from kiln_common.ids import new_id
from kiln_common.publications import Publication, PublicationState
from kiln_devstack.devservers import Glance
from kiln_devstack.stack import Stack
from kiln_publisher.core import PUBLICATIONS_BUCKET
from kiln_publisher.model import RUNNING, Result, record_bytes
from kiln_recipe.schema import ImageRef

pytestmark = [pytest.mark.e2e]

CLOUD = "kiln-a"  # a Keystone project with one member user (tests/conftest.py)
REGION = "RegionOne"


@pytest.fixture(scope="module")
def cloud(glance: Glance, clouds_yaml: Path) -> Path:
    """The session's Keystone and Glance (tests/conftest.py); their clouds.yaml."""
    return clouds_yaml


@pytest.fixture(scope="module")
def env(request: pytest.FixtureRequest, cloud: Path) -> Iterator[dict[str, str]]:
    """`kiln up` with the clouds.yaml found the way openstacksdk finds it."""
    with (
        scratch(request, "stack") as where,
        kiln_up(where, OS_CLIENT_CONFIG_FILE=str(cloud)) as environ,
    ):
        yield environ


def stack_of(env: dict[str, str]) -> Stack:
    found = Stack.load(Path(env["KILN_HOME"]))
    assert found is not None
    return found


def push_image(env: dict[str, str], where: Path, build_id: str, name: str) -> str:
    """A small qcow2 stored as the image artifact of build_id, as the builder
    stores one (its labels are the service identity's to write)."""
    path = where / f"{name}.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(path), "32M"], check=True)
    labels = {"name": name, "version": "1", "format": "qcow2", "build-id": build_id,
              "kiln-kind": "image"}  # fmt: skip
    service = (Path(env["KILN_HOME"]) / "service-token").read_text().strip()
    # Acting for the stack's admin tenant, as a builder does for a build of it.
    with acting_for(LOCAL_TENANT), StorageClient(stack_of(env).storage, token=service) as storage:
        return str(storage.push(path, labels).id)


def glance_images(cloud: Path, name: str) -> list[openstack.image.v2.image.Image]:
    config = OpenStackConfig(config_files=[str(cloud)]).get_one(cloud=CLOUD, region_name=REGION)
    conn = openstack.connection.Connection(config=config)
    try:
        return list(conn.image.images(name=name))
    finally:
        conn.close()


def test_publish_a_build_to_glance_and_the_marketplace(
    env: dict[str, str], cloud: Path, tmp_path: Path
) -> None:
    build_id = new_id()
    artifact_id = push_image(env, tmp_path, build_id, "pubtest")
    args = ("publish", build_id, "--glance", CLOUD, "--marketplace", "--json")
    first = json.loads(kiln(env, *args).stdout)
    assert first["state"] == "STATE_DONE", first
    by_kind = {r["kind"]: r for r in first["results"]}
    image_id = by_kind["glance"]["image_id"]
    identifier = by_kind["marketplace"]["entry_identifier"]

    with StorageClient(stack_of(env).storage) as storage:
        artifact = storage.stat(artifact_id)
    [image] = glance_images(cloud, "pubtest-1")
    assert image.id == image_id and image.status == "active"
    assert image.hash_value == artifact.checksums.sha512  # os_hash_value, Glance's own
    assert image.properties["kiln_artifact_id"] == artifact_id
    assert image.properties["kiln_build_id"] == build_id

    # Asked again: the same image and entry, never a duplicate.
    again = json.loads(kiln(env, *args).stdout)
    assert {r["kind"]: r.get("image_id") for r in again["results"]}["glance"] == image_id
    assert len(glance_images(cloud, "pubtest-1")) == 1

    # The signed entry, checked offline with the local stack's keyring; a
    # changed copy is rejected.
    shown = kiln(env, "market", "show", identifier, "--json").stdout
    entry_file = tmp_path / "entry.json"
    entry_file.write_text(shown)
    verified = json.loads(kiln(env, "market", "verify", "--file", str(entry_file), "--json").stdout)
    assert verified["valid"] and verified["identifier"] == identifier
    document = json.loads(shown)
    # Its first location is the marketplace's stable link, which outlives the
    # storage URL signed beside it: followed, it gives the image.
    stable, signed_url = document["entry"]["locations"]
    endorser = document["entry"]["endorser"]["email"]
    assert stable == (f"{stack_of(env).publisher_http}/api/v1/entries/{identifier}/download"
                      f"?endorser={quote(endorser)}")  # fmt: skip
    assert signed_url != stable
    with urllib.request.urlopen(stable, timeout=30) as reply:  # a 307 to storage, followed
        assert reply.read() == (tmp_path / "pubtest.qcow2").read_bytes()
    document["entry"]["size"] += 1
    entry_file.write_text(json.dumps(document))
    bad = kiln(env, "market", "verify", "--file", str(entry_file), check=False)
    assert bad.returncode == 1 and "does not match its signature" in bad.stderr

    found = kiln(env, "market", "search", "--status", "valid", "--json").stdout
    assert identifier in {e["entry"]["identifier"] for e in json.loads(found)}

    # The builder's bases from the marketplace and from Glance, through the
    # publisher: checked, cached by digest, not downloaded a second time.
    publisher = stack_of(env).publisher
    for source in ({"marketplace": identifier}, {"glance": {"cloud": CLOUD, "id": image_id}}):
        ref = ImageRef.model_validate(source)
        base = asyncio.run(fetch_base(ref, tmp_path, tmp_path, storage=None, publisher=publisher))
        assert base.sha256 == artifact.checksums.sha256 and base.downloaded == artifact.size
        assert base.path.read_bytes() == (tmp_path / "pubtest.qcow2").read_bytes()
        again = asyncio.run(fetch_base(ref, tmp_path, tmp_path, storage=None, publisher=publisher))
        assert (again.path, again.downloaded) == (base.path, 0)


RECIPE = """\
name: autopub
version: "1"
from:
  bootstrap: {distro: debian, release: bookworm}
publish:
  glance: {cloud: kiln-a, tags: [auto]}
  marketplace: true
"""


async def _announce_twice(
    url: str, build_id: str, recipe: str = RECIPE, state: BuildState | None = BuildState.SUCCEEDED
) -> None:
    """What the builder does, and NATS redelivering it: the recipe kept for
    the build, its record saying it succeeded (for the stack's tenant), then
    build.succeeded twice (two event ids, so both are stored)."""
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        recipes = await js.object_store("kiln_recipes")
        await recipes.put(build_id, bpb.RecipeSource(yaml=recipe).SerializeToString())
        if state is not None:
            record = Build(id=build_id, state=state, tenant=LOCAL_TENANT)
            await (await js.key_value(BUILDS_BUCKET)).put(build_id, wire.build_bytes(record))
        for _ in range(2):
            event = make_event("build.succeeded", build_id, {"id": build_id}, "test")
            await js.publish(subject_for("build.succeeded"), to_json(event))
    finally:
        await nc.close()


async def _all_acked(url: str) -> bool:
    nc = await nats.connect(url)
    try:
        info = await nc.jetstream().consumer_info("KILN_EVENTS", "kiln-publisher-auto")
        return info.num_pending == 0 and info.num_ack_pending == 0
    finally:
        await nc.close()


def test_a_build_with_publish_targets_is_published_once(
    env: dict[str, str], cloud: Path, tmp_path: Path
) -> None:
    build_id = new_id()
    push_image(env, tmp_path, build_id, "autopub")
    stack = stack_of(env)
    asyncio.run(_announce_twice(stack.nats_url, build_id))
    with PublisherClient(stack.publisher) as client:

        def finished() -> bool:
            try:
                return client.publication(f"auto-{build_id}").state in (3, 4)
            except Exception:  # noqa: BLE001 - not recorded yet
                return False

        wait_until("the automatic publication", finished, timeout=120, interval=0.5)
        publication = client.publication(f"auto-{build_id}")
    assert [(r.kind, r.state) for r in publication.results] == [
        ("glance", 3),
        ("marketplace", 3),
    ], publication
    # Both events handled and acked; the second found the record done.
    wait_until("both events acked", lambda: asyncio.run(_all_acked(stack.nats_url)), 60, 0.5)
    images = glance_images(cloud, "autopub-1")
    assert len(images) == 1 and "auto" in images[0].tags


def test_a_forged_build_succeeded_publishes_nothing(
    env: dict[str, str], cloud: Path, tmp_path: Path
) -> None:
    """An event is a prompt, the builder's record the fact: build.succeeded
    for a build the builder does not say succeeded (one still queued, one it
    never heard of) is acked, and nothing is published."""
    stack = stack_of(env)
    queued, unknown = new_id(), new_id()
    push_image(env, tmp_path, queued, "forged")
    asyncio.run(_announce_twice(stack.nats_url, queued, state=BuildState.QUEUED))
    asyncio.run(_announce_twice(stack.nats_url, unknown, state=None))
    wait_until("the events acked", lambda: asyncio.run(_all_acked(stack.nats_url)), 60, 0.5)
    with PublisherClient(stack.publisher) as client:
        for build_id in (queued, unknown):
            with pytest.raises(NotFound):
                client.publication(f"auto-{build_id}")
    assert glance_images(cloud, "forged-1") == []


def test_a_killed_publisher_is_restarted_alone_and_loses_nothing(env: dict[str, str]) -> None:
    """Publications and entries live in NATS: a publisher SIGKILLed and started
    again by `kiln up` (on its old port) answers for what the old one did."""
    with PublisherClient(stack_of(env).publisher) as client:
        before = [p.id for p in client.publications()]
        entries = [e.identifier for e in client.search()]
    assert before and entries  # the tests above published
    old = stack_of(env).pids
    kill_part(Path(env["KILN_HOME"]), "publisher")
    pids = restart_dead_parts(env)
    assert pids["publisher"] != old["publisher"]
    assert {k: v for k, v in pids.items() if k != "publisher"} == {
        k: v for k, v in old.items() if k != "publisher"
    }
    with PublisherClient(stack_of(env).publisher) as client:
        assert [p.id for p in client.publications()] == before
        assert [e.identifier for e in client.search()] == entries


async def _record_interrupted(url: str, build_id: str, artifact_id: str) -> None:
    """What a publisher that died mid-upload leaves: the build's publication
    with its Glance target still running, and the event not acked."""
    pub = Publication(
        id=f"auto-{build_id}",
        artifact_id="",
        build_id=build_id,
        results=(Result(artifact_id, "glance", CLOUD, state=RUNNING),),
        tenant=LOCAL_TENANT,
    )
    nc = await nats.connect(url)
    try:
        kv = await jetstream.key_value(nc.jetstream(), PUBLICATIONS_BUCKET)
        await kv.put(pub.id, record_bytes(pub))
    finally:
        await nc.close()


def test_a_publication_cut_short_is_finished_by_the_next_delivery(
    env: dict[str, str], cloud: Path, tmp_path: Path
) -> None:
    build_id = new_id()
    artifact_id = push_image(env, tmp_path, build_id, "autocut")
    stack = stack_of(env)
    asyncio.run(_record_interrupted(stack.nats_url, build_id, artifact_id))
    asyncio.run(_announce_twice(stack.nats_url, build_id, RECIPE.replace("autopub", "autocut")))
    with PublisherClient(stack.publisher) as client:
        wait_until(
            "the publication to be finished",
            lambda: client.publication(f"auto-{build_id}").state == PublicationState.DONE,
            timeout=120,
            interval=0.5,
        )
        results = client.publication(f"auto-{build_id}").results
    assert [(r.kind, r.state) for r in results] == [
        ("glance", PublicationState.DONE),
        ("marketplace", PublicationState.DONE),
    ]
    assert len(glance_images(cloud, "autocut-1")) == 1
