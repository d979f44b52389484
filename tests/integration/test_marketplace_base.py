"""A `from.image.marketplace` base, for real: the entry is signed into a real
NATS, the publisher service verifies it and hands it to the builder, which
downloads the image from the entry's locations (the real storage service's
URL, or a local Range-capable HTTP server), checked against the entry's
digests. A dead or lying location is passed over for the next; a build whose
every location fails says which and why; a tampered entry or one from an
unknown endorser is refused before any download. An entry whose signed
storage URLs have expired is downloaded from the URL the publisher signs for
it when asked."""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp
import nats
import pytest
from google.protobuf.duration_pb2 import Duration
from market_support import ENDORSER, endorser_ring, facts_for, stored_image
from market_support import market as signing_market
from support import ImageServer, payload, storage_stub

from kiln_api.storage.v1 import storage_pb2 as spb
from kiln_builder.base.download import NoGoodLocation
from kiln_builder.base.fetch import fetch_base
from kiln_builder.engine import Bake, BakeOptions
from kiln_common.errors import FailedPrecondition, NotFound
from kiln_common.proc import run_sync
from kiln_devstack.devservers import Nats, free_port
from kiln_publisher.app import build
from kiln_publisher.market import Market
from kiln_publisher.settings import PublisherSettings
from kiln_recipe.loader import parse_recipe
from kiln_recipe.schema import ImageRef

if TYPE_CHECKING:
    from conftest import TestRootfs

pytestmark = pytest.mark.integration


@dataclass
class Marketplace:
    """A running publisher (gRPC address) and a replica that signs entries into
    its NATS as ENDORSER, whose key the publisher trusts."""

    publisher: str
    storage: str
    market: Market
    nats_url: str


@pytest.fixture
async def marketplace(
    tmp_path: Path, nats_server: Nats, storage_service: Any
) -> AsyncIterator[Marketplace]:
    keys = endorser_ring(tmp_path / "keys")
    async with (
        storage_service() as (_, storage),
        signing_market(nats_server.url, keys, "test-signer") as market,
    ):
        settings = PublisherSettings(
            grpc_bind="127.0.0.1:0", http_port=0, storage=storage, nats_url=nats_server.url,
            keyring_dir=tmp_path / "keys", endorser_key_dir=tmp_path / "no-keys",
            clouds_yaml=tmp_path / "no-clouds.yaml", auto_publish=False, shutdown_grace=1.0,
        )  # fmt: skip
        publisher = await build(settings)
        try:
            port = await publisher.grpc.start()
            yield Marketplace(f"127.0.0.1:{port}", storage, market, nats_server.url)
        finally:
            await publisher.stop()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ImageServer]:
    (tmp_path / "srv").mkdir()
    with ImageServer(tmp_path / "srv") as served:
        yield served


def dead_url() -> str:
    """A URL on a loopback port nothing listens on: the connection is refused."""
    return f"http://127.0.0.1:{free_port()}/base.img"


async def fetch(identifier: str, where: Marketplace, cache: Path) -> Any:
    ref = ImageRef.model_validate({"marketplace": identifier})
    return await fetch_base(ref, cache, cache, storage=None, publisher=where.publisher)


def leftovers(cache: Path) -> list[str]:
    bases = cache / "bases"
    return sorted(p.name for p in bases.iterdir() if not p.name.endswith(".lock"))


async def test_a_marketplace_base_comes_from_its_location_then_from_the_cache(
    marketplace: Marketplace, tmp_path: Path
) -> None:
    data = payload(3 << 20, seed=7)
    facts = await stored_image(marketplace.storage, data)  # located at storage's real URL
    signed = await marketplace.market.publish(facts, ENDORSER)
    cache = tmp_path / "cache"
    first = await fetch(signed.identifier, marketplace, cache)
    assert (first.sha256, first.downloaded) == (facts.sha256, len(data))
    assert first.source == f"marketplace:{signed.identifier}"
    assert first.path.read_bytes() == data
    again = await fetch(signed.identifier, marketplace, cache)
    assert (again.path, again.downloaded) == (first.path, 0)

    # The cached base is checked against the entry again: once deprecated, no
    # build uses it, cached or not.
    await marketplace.market.deprecate(signed.identifier)
    with pytest.raises(FailedPrecondition, match="is deprecated"):
        await fetch(signed.identifier, marketplace, cache)


async def test_an_entry_whose_storage_url_expired_is_downloaded_from_a_freshly_signed_one(
    marketplace: Marketplace, tmp_path: Path
) -> None:
    data = payload(1 << 20, seed=14)
    facts = await stored_image(marketplace.storage, data)
    async with storage_stub(marketplace.storage) as stub:
        second = Duration(seconds=1)
        ask = spb.GetDownloadUrlRequest(id=facts.artifact_id, expires_in=second)
        short = (await stub.GetDownloadUrl(ask)).url
    await asyncio.sleep(2)
    async with aiohttp.ClientSession() as http, http.get(short) as answer:
        assert answer.status == 403  # storage refuses the expired URL
    signed = await marketplace.market.publish(replace(facts, locations=(short,)), ENDORSER)
    base = await fetch(signed.identifier, marketplace, tmp_path / "cache")
    assert base.path.read_bytes() == data and base.downloaded == len(data)


@pytest.mark.parametrize("first", ["refused", "wrong bytes", "longer than the entry"])
async def test_a_dead_or_lying_first_location_is_passed_over_for_the_second(
    first: str,
    marketplace: Marketplace,
    server: ImageServer,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    data = payload(2 << 20, seed=8)
    (server.root / "good.img").write_bytes(data)
    # Longer: the entry's bytes and more (no download may outgrow the entry's size).
    lying = data + b"more" if first == "longer than the entry" else payload(2 << 20, seed=9)
    (server.root / "bad.img").write_bytes(lying)
    bad = dead_url() if first == "refused" else f"{server.url}/bad.img"
    facts = facts_for(data, locations=(bad, f"{server.url}/good.img"))
    signed = await marketplace.market.publish(facts, ENDORSER)
    cache = tmp_path / "cache"
    base = await fetch(signed.identifier, marketplace, cache)
    assert base.path.read_bytes() == data and base.downloaded == len(data)
    assert len(server.gets("good.img")) == 1
    assert len(server.gets("bad.img")) == (0 if first == "refused" else 1)
    assert leftovers(cache) == [facts.sha256]  # the wrong bytes left nothing behind
    if first == "longer than the entry":  # refused by its size, before any byte was kept
        assert f"{len(data) + 4} bytes, more than the limit of {len(data)}" in caplog.text


def bake_from(identifier: str, publisher: str, work: Path) -> Bake:
    text = (
        f'name: from-market\nversion: "1"\nfrom:\n  image: {{marketplace: "{identifier}"}}\n'
        'files:\n  - {path: /etc/motd, content: "from the marketplace\\n"}\n'
        "outputs: [raw]\ntest: {boot: false}\n"
    )
    options = BakeOptions(
        out_dir=work / "out", work_root=work / "work", cache_dir=work / "cache",
        build_id="b1", boot_test=False, publisher=publisher,
    )  # fmt: skip
    return Bake(parse_recipe(text, work), options)


async def test_when_every_location_fails_the_build_fails_naming_each_and_why(
    marketplace: Marketplace, server: ImageServer, tmp_path: Path
) -> None:
    data = payload(1 << 20, seed=10)
    (server.root / "other.img").write_bytes(payload(1 << 20, seed=11))
    refused, missing, wrong = dead_url(), f"{server.url}/gone.img", f"{server.url}/other.img"
    facts = facts_for(data, locations=(refused, missing, wrong))
    signed = await marketplace.market.publish(facts, ENDORSER)
    bake = bake_from(signed.identifier, marketplace.publisher, tmp_path)
    with pytest.raises(NoGoodLocation) as failed:
        await bake.run()
    message = str(failed.value)
    assert f"from.image.marketplace {signed.identifier}: no location gave the image" in message
    assert re.search(rf"\(1\) could not download {re.escape(refused)}: .*refused", message)
    assert f"(2) {missing} answered 404" in message
    assert f"(3) {wrong} does not have the SHA-256 {facts.sha256}" in message
    assert leftovers(tmp_path / "cache") == []


async def test_a_tampered_entry_is_refused_before_any_download(
    marketplace: Marketplace, server: ImageServer, tmp_path: Path
) -> None:
    data = payload(1 << 20, seed=12)
    (server.root / "base.img").write_bytes(data)
    facts = facts_for(data, locations=(f"{server.url}/base.img",))
    signed = await marketplace.market.publish(facts, ENDORSER)
    nc = await nats.connect(marketplace.nats_url)
    try:
        kv = await nc.jetstream().key_value("KILN_MARKET")
        (key,) = await kv.keys()
        document = json.loads(signed.document)
        document["entry"]["title"] = "Debian 12, now with extras"
        await kv.put(key, json.dumps(document).encode())
    finally:
        await nc.close()
    with pytest.raises(NotFound, match=f"no marketplace entry {signed.identifier}"):
        await fetch(signed.identifier, marketplace, tmp_path / "cache")
    assert server.requests == []


async def test_an_entry_from_an_unknown_endorser_is_refused_before_any_download(
    marketplace: Marketplace, server: ImageServer, tmp_path: Path
) -> None:
    data = payload(1 << 20, seed=13)
    (server.root / "base.img").write_bytes(data)
    rogue = endorser_ring(tmp_path / "rogue", "rogue@example.org")  # the publisher lacks it
    async with signing_market(marketplace.nats_url, rogue, "test-signer") as theirs:
        facts = facts_for(data, locations=(f"{server.url}/base.img",))
        signed = await theirs.publish(facts, "rogue@example.org")
    with pytest.raises(NotFound, match=f"no marketplace entry {signed.identifier}"):
        await fetch(signed.identifier, marketplace, tmp_path / "cache")
    assert server.requests == []


@pytest.mark.build
async def test_an_image_is_customised_from_a_marketplace_base_at_its_second_location(
    test_rootfs: TestRootfs, marketplace: Marketplace, server: ImageServer, tmp_path: Path
) -> None:
    run_sync(["zstd", "-q", "-T0", test_rootfs.image, "-o", server.root / "base.img"])
    data = (server.root / "base.img").read_bytes()
    facts = facts_for(data, locations=(dead_url(), f"{server.url}/base.img"))
    signed = await marketplace.market.publish(facts, ENDORSER)
    bake = bake_from(signed.identifier, marketplace.publisher, tmp_path)
    result = await bake.run()
    assert result.base is not None and result.base.sha256 == hashlib.sha256(data).hexdigest()
    assert result.base.source == f"marketplace:{signed.identifier}"
    shown = run_sync(["debugfs", "-R", "cat /etc/motd", result.outputs[0].path]).stdout
    assert shown.endswith("from the marketplace\n")
    assert len(server.gets("base.img")) == 1
