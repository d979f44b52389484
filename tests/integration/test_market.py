"""The marketplace against real NATS and a real storage service: entries
shared by replicas and kept across a NATS restart, deprecation and expiry
re-signed once with their events, the JSON API, and the HTML catalogue opened
in headless Chromium, which follows an entry's download link (the fresh-URL
redirect) itself and gets a 206 Range reply."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import nats
import pytest
from aiohttp import web
from market_support import (
    ENDORSER,
    endorser_ring,
    facts_for,
    market,
    public_only,
    publisher_settings,
    stored_image,
)
from playwright.async_api import Browser
from support import await_until, events_about, payload, storage_stub

from kiln_api.storage.v1 import storage_pb2 as pb
from kiln_cli.publish_cmd import cmd_verify
from kiln_client.storage import AsyncStorageClient
from kiln_common.errors import FailedPrecondition, NotFound
from kiln_common.events import NoEvents
from kiln_common.jetstream import kv_keys
from kiln_devstack.devservers import Nats, free_port, port_of, start_nats, stopping
from kiln_market import Entry, ImageFacts, Rejected, verify
from kiln_publisher.app import build
from kiln_publisher.market import Market, Query, make_app
from kiln_publisher.market.sbom import PAGE_WAIT, StoredSboms

pytestmark = pytest.mark.integration


async def test_replicas_share_entries_and_a_nats_restart_loses_nothing(
    tmp_path: Path, storage_service: Any
) -> None:
    keys = endorser_ring(tmp_path / "keys")
    store = tmp_path / "nats"
    server = start_nats(store, tmp_path / "nats.log")
    with stopping(server.pid):
        async with storage_service() as (_, address):
            facts = await stored_image(address, payload(4096, seed=1))
            async with (
                market(server.url, keys, "one") as one,
                market(server.url, keys, "two") as two,
            ):
                published = await one.publish(facts, ENDORSER)
                seen = await two.get(published.identifier)
                assert seen.document == published.document
                deprecated = await two.deprecate(published.identifier)
                assert deprecated.entry.sequence == 2 and deprecated.entry.deprecated
                assert (await one.get(published.identifier)).entry.status() == "deprecated"
                assert await one.search(Query(status="valid")) == []
        types = [e["type"] for e in await events_about(server.url, published.identifier)]
        assert types == ["entry.published", "entry.deprecated"]
    # A NATS restarted on the same store holds the same signed documents.
    again = start_nats(store, tmp_path / "nats-2.log", port_of(server.url), port_of(server.monitor))
    with stopping(again.pid):
        async with market(again.url, public_only(keys), "three") as three:
            kept = await three.get(published.identifier)
            assert kept.document == deprecated.document
            assert verify(kept.document, public_only(keys), newest=deprecated.entry).deprecated
            with pytest.raises(NotFound):
                await three.get("A" * 27)


async def test_sweep_expires_an_entry_once_however_many_replicas_sweep(
    tmp_path: Path, nats_server: Nats
) -> None:
    keys = endorser_ring(tmp_path / "keys")
    async with (
        market(nats_server.url, keys, "one") as one,
        market(nats_server.url, keys, "two") as two,
    ):
        short = await one.publish(facts_for(b"short-lived"), ENDORSER, valid_for=timedelta(hours=1))
        long = await one.publish(facts_for(b"long-lived"), ENDORSER)
        later = datetime.now(UTC) + timedelta(hours=2)
        swept = await asyncio.gather(one.sweep(later), two.sweep(later))
        newly = [s.identifier for batch in swept for s in batch]
        assert newly == [short.identifier]
        assert (await two.sweep(later)) == []
        stored = await one.get(short.identifier)
        assert stored.entry.expired and stored.entry.sequence == 2
        assert (await one.get(long.identifier)).entry.status(later) == "valid"
        assert [s.identifier for s in await two.search(Query(status="expired"))] == [
            short.identifier
        ]
    types = [e["type"] for e in await events_about(nats_server.url, short.identifier)]
    assert types == ["entry.published", "entry.expired"]


async def test_a_document_altered_inside_nats_is_not_served(
    tmp_path: Path, nats_server: Nats
) -> None:
    keys = endorser_ring(tmp_path / "keys")
    async with market(nats_server.url, keys) as one:
        signed = await one.publish(facts_for(b"image"), ENDORSER)
        nc = await nats.connect(nats_server.url)
        kv = await nc.jetstream().key_value("KILN_MARKET")
        (key,) = await kv_keys(nc.jetstream(), "KILN_MARKET")
        outer = json.loads(signed.document)
        outer["entry"]["locations"] = ["https://evil.example.org/x.qcow2"]
        await kv.put(key, json.dumps(outer).encode())
        await nc.close()
        assert await one.search(Query()) == []
        with pytest.raises(NotFound):
            await one.get(signed.identifier)


@asynccontextmanager
async def serving(app: web.Application) -> AsyncIterator[str]:
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


async def test_the_json_api_filters_shows_and_serves_the_signed_document(
    tmp_path: Path, nats_server: Nats
) -> None:
    keys = endorser_ring(tmp_path / "keys")
    async with market(nats_server.url, keys) as one, serving(make_app(one)) as base:
        debian = await one.publish(facts_for(b"debian"), ENDORSER)
        await one.publish(
            facts_for(b"alma", os="almalinux", os_version="9", title="Alma"), ENDORSER
        )
        async with aiohttp.ClientSession(base) as http:
            async with http.get("/api/v1/entries", params={"os": "debian", "status": "valid"}) as r:
                listed = (await r.json())["entries"]
            assert [e["identifier"] for e in listed] == [debian.identifier]
            assert listed[0]["status"] == "valid" and listed[0]["links"]["download"]
            async with http.get("/api/v1/entries", params={"q": "alma"}) as r:
                assert [e["os"] for e in (await r.json())["entries"]] == ["almalinux"]
            async with http.get(f"/api/v1/entries/{debian.identifier}") as r:
                assert (await r.json())["checksums"]["sha256"] == debian.entry.checksums.sha256
            async with http.get(f"/api/v1/entries/{debian.identifier}/entry.json") as r:
                document = await r.read()
            assert verify(document, public_only(keys)) == debian.entry
            async with http.get("/api/v1/entries/" + "A" * 27) as r:
                assert r.status == 404 and (await r.json())["error"] == "NotFound"
            async with http.get("/api/v1/entries", params={"status": "sideways"}) as r:
                assert r.status == 400 and "status is one of" in (await r.json())["message"]


async def test_pages_answer_with_storage_away_and_are_html_pages_with_nats_away(
    tmp_path: Path,
) -> None:
    """An entry's page does not wait out the storage client's retries when
    storage is away: it says the SBOM is not available and shows the rest.
    With NATS away too, the pages are 503 pages; the JSON API stays JSON."""
    keys = endorser_ring(tmp_path / "keys")
    server = start_nats(tmp_path / "nats", tmp_path / "nats.log")
    # A storage service that is not there: nothing listens on its port.
    away = AsyncStorageClient(f"127.0.0.1:{free_port()}")
    nc = await nats.connect(server.url)
    one = Market(nc.jetstream(), keys, NoEvents())  # no outbox to flush into a NATS gone
    try:
        async with (
            serving(make_app(one, sbom=StoredSboms(away))) as base,
            aiohttp.ClientSession(base) as http,
        ):
            with stopping(server.pid):
                signed = await one.publish(facts_for(b"storage away"), ENDORSER)
                assert signed.entry.sbom_sha256  # it has one to list
                page = f"/entries/{signed.identifier}"
                start = time.monotonic()
                async with http.get(page) as r:
                    assert r.status == 200
                    text = await r.text()
                assert time.monotonic() - start < PAGE_WAIT + 2
                assert "The SBOM is not available right now" in text and "Verify it" in text
            # NATS is gone now.
            for path in ("/", page):
                async with http.get(path) as r:
                    assert (r.status, r.content_type) == (503, "text/html"), path
                    assert "<!doctype html>" in (await r.text()).lower()
            async with http.get(f"/api/v1/entries/{signed.identifier}") as r:
                assert r.status == 503 and (await r.json())["error"] == "Unavailable"
    finally:
        # nats.py's close of a connection whose server is gone raises from its transport.
        with contextlib.suppress(ConnectionError):
            await nc.close()
        await away.close()


async def first_bytes(storage: AsyncStorageClient, artifact_id: str, count: int) -> bytes:
    """The artifact's first count bytes, read through the storage service's gRPC API."""
    read = b""
    async for chunk in storage.stream(artifact_id):
        read += chunk
        if len(read) >= count:
            break
    return read[:count]


async def test_chromium_follows_the_catalogues_download_link_to_a_206_range_reply(
    tmp_path: Path, nats_server: Nats, storage_service: Any, chromium: Browser
) -> None:
    """Chromium opens the catalogue, finds the entry by its title and
    identifier, and clicks its download link with a Range header: the request
    leaves Chromium, follows the publisher's 307 to a freshly signed storage
    URL, and Chromium gets 206 with the first 1024 bytes, which it saves."""
    keys = endorser_ring(tmp_path / "keys")
    data = payload(256 * 1024, seed=7)
    async with storage_service() as (_, address), AsyncStorageClient(address) as storage:
        facts = await stored_image(address, data)
        title = 'Debian <script>alert("x")</script> & co'
        # As in production once a week has passed: the signed location no longer
        # serves (here it is spoilt rather than waited out), and the app
        # is given a locator, so only the fresh-URL redirect reaches the bytes.
        expired = facts.locations[0] + "0"
        facts = ImageFacts(**{**vars(facts), "title": title, "locations": (expired,)})

        async def locate(entry: Entry) -> str:
            return await storage.url(entry.artifact_id)

        async with (
            market(nats_server.url, keys) as one,
            serving(make_app(one, locate)) as base,
        ):
            signed = await one.publish(facts, ENDORSER)
            context = await chromium.new_context(accept_downloads=True)
            try:
                page = await context.new_page()
                dialogs: list[str] = []  # an alert() would mean the title ran as script
                page.on("dialog", lambda dialog: dialogs.append(dialog.message))
                await page.goto(f"{base}/?os=debian")
                row = page.locator("tr.entry").filter(has_text=title)
                assert await row.count() == 1 and dialogs == []
                assert await row.locator(".identifier").inner_text() == signed.identifier
                link = row.locator("a.download")
                href = await link.get_attribute("href")
                assert href and href.startswith(f"/api/v1/entries/{signed.identifier}/download")
                # Chromium adds the header to every request it makes from now on,
                # the redirected one included.
                await page.set_extra_http_headers({"Range": "bytes=0-1023"})
                async with (
                    page.expect_response(lambda r: r.request.redirected_from is not None) as got,
                    page.expect_download() as started,
                ):
                    await link.click()
                reply, download = await got.value, await started.value
                saved = Path(await download.path()).read_bytes()
                redirect = reply.request.redirected_from
                assert redirect is not None and redirect.url == base + href
                first = await redirect.response()
                assert first is not None and first.status == 307
                assert first.headers["location"] == reply.url == download.url != expired
                sent = await reply.request.all_headers()
                assert sent["range"] == "bytes=0-1023"
            finally:
                await context.close()
        size = (await storage.stat(signed.entry.artifact_id)).size
        assert reply.status == 206 and size == len(data)
        assert reply.headers["content-range"] == f"bytes 0-1023/{size}"
        assert saved == await first_bytes(storage, signed.entry.artifact_id, 1024)


async def test_with_a_locator_download_links_redirect_to_a_freshly_signed_url(
    tmp_path: Path, nats_server: Nats, storage_service: Any
) -> None:
    keys = endorser_ring(tmp_path / "keys")
    data = payload(64 * 1024, seed=9)
    async with storage_service() as (_, address), storage_stub(address) as stub:
        facts = await stored_image(address, data)
        # The signed location has expired: only a fresh URL reaches the bytes.
        facts = ImageFacts(**{**vars(facts), "locations": (facts.locations[0] + "0",)})
        asked: list[str] = []

        async def locate(entry: Entry) -> str:
            asked.append(entry.artifact_id)
            request = pb.GetDownloadUrlRequest(id=entry.artifact_id)
            return str((await stub.GetDownloadUrl(request)).url)

        async with market(nats_server.url, keys) as one, serving(make_app(one, locate)) as base:
            signed = await one.publish(facts, ENDORSER)
            async with aiohttp.ClientSession(base) as http:
                async with http.get(f"/api/v1/entries/{signed.identifier}") as r:
                    link = (await r.json())["links"]["download"]
                assert link.startswith(f"/api/v1/entries/{signed.identifier}/download")
                async with http.get(link, allow_redirects=False) as r:
                    assert r.status == 307
                ranged = {"Range": "bytes=10-19"}
                async with http.get(link, headers=ranged) as r:
                    assert r.status == 206 and await r.read() == data[10:20]
                async with http.get("/", params={"os": "debian"}) as r:
                    assert f'class="download" href="{link}"' in await r.text()
            assert asked and set(asked) == {facts.artifact_id}


async def test_an_older_statement_put_back_inside_nats_is_refused(
    tmp_path: Path, nats_server: Nats
) -> None:
    keys = endorser_ring(tmp_path / "keys")
    async with market(nats_server.url, keys) as one:
        first = await one.publish(facts_for(b"image"), ENDORSER)
        await one.deprecate(first.identifier)
        nc = await nats.connect(nats_server.url)
        kv = await nc.jetstream().key_value("KILN_MARKET")
        (key,) = await kv_keys(nc.jetstream(), "KILN_MARKET")
        await kv.put(key, first.document)  # the validly signed, pre-deprecation entry
        await nc.close()
        assert await one.search(Query(status="valid")) == []
        with pytest.raises(NotFound):
            await one.get(first.identifier)
        # The newest statement deprecated the image: endorsing it again is refused.
        with pytest.raises(FailedPrecondition, match="deprecated"):
            await one.publish(facts_for(b"image"), ENDORSER)


async def test_a_replica_started_after_a_rollback_refuses_the_older_statement(
    tmp_path: Path, nats_server: Nats
) -> None:
    keys = endorser_ring(tmp_path / "keys")
    async with (
        market(nats_server.url, keys, "one") as one,
        market(nats_server.url, keys, "two") as two,
    ):
        first = await one.publish(facts_for(b"image"), ENDORSER)
        assert (await two.deprecate(first.identifier)).entry.sequence == 2
    nc = await nats.connect(nats_server.url)
    kv = await nc.jetstream().key_value("KILN_MARKET")
    (key,) = await kv_keys(nc.jetstream(), "KILN_MARKET")
    await kv.put(key, first.document)  # the validly signed, pre-deprecation entry
    await nc.close()
    # A new process: nothing in memory, only what NATS holds.
    async with market(nats_server.url, keys, "three") as three:
        with pytest.raises(NotFound):
            await three.get(first.identifier)
        assert await three.search(Query()) == []
        with pytest.raises(FailedPrecondition, match="deprecated"):
            await three.publish(facts_for(b"image"), ENDORSER)


async def test_publishing_again_keeps_a_valid_entry_and_renews_an_expired_one(
    tmp_path: Path, nats_server: Nats
) -> None:
    keys = endorser_ring(tmp_path / "keys")
    async with market(nats_server.url, keys) as one:
        first = await one.publish(facts_for(b"image"), ENDORSER, valid_for=timedelta(hours=1))
        # A new storage URL each run, as the publisher signs one each time.
        moved = facts_for(b"image", locations=("https://storage.example.org/other",))
        assert await one.publish(moved, ENDORSER) == first
        retitled = await one.publish(facts_for(b"image", title="Web 2"), ENDORSER)
        assert retitled.entry.sequence == 2 and retitled.entry.title == "Web 2"
        later = datetime.now(UTC) + timedelta(days=365)
        renewed = await one.publish(facts_for(b"image", title="Web 2"), ENDORSER, now=later)
        assert renewed.entry.sequence == 3 and renewed.entry.status(later) == "valid"
        await one.deprecate(first.identifier)
        with pytest.raises(FailedPrecondition, match=f"entry {first.identifier} by {ENDORSER}"):
            await one.publish(facts_for(b"image", title="Web 2"), ENDORSER)
        assert (await one.get(first.identifier)).entry.deprecated


async def test_verify_file_holds_an_entry_against_the_running_publishers_newest(
    tmp_path: Path, nats_server: Nats, storage_service: Any, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    keys = endorser_ring(tmp_path / "keys")
    async with storage_service() as (_, address), market(nats_server.url, keys) as one:
        first = await one.publish(facts_for(b"image"), ENDORSER)
        deprecated = await one.deprecate(first.identifier)
        settings = publisher_settings(tmp_path, address, nats_server.url)
        publisher = await build(settings)
        try:
            port = await publisher.grpc.start()
            monkeypatch.setenv("KILN_PUBLISHER", f"127.0.0.1:{port}")
            saved = tmp_path / "entry.json"
            saved.write_bytes(first.document)
            args = argparse.Namespace(
                identifier="",
                file=saved,
                newest=None,
                keyring=[tmp_path / "keys"],
                json=False,
                endorser="",
            )
            # The CLI's client blocks: it runs beside this loop, which serves it.
            with pytest.raises(Rejected) as caught:
                await asyncio.to_thread(cmd_verify, args)
            assert caught.value.reason == "stale"
            # With --json the rejection is the command's answer, on stdout, exit 1.
            args.json = True
            capsys.readouterr()
            assert await asyncio.to_thread(cmd_verify, args) == 1
            answer = json.loads(capsys.readouterr().out)
            assert (answer["valid"], answer["reason"]) == (False, "stale")
            saved.write_bytes(deprecated.document)
            assert await asyncio.to_thread(cmd_verify, args) == 0
        finally:
            await publisher.stop()


def swap_secret(mount: Path, name: str, document: dict[str, Any]) -> None:
    """Updates a mounted Secret as the kubelet does: the files are links through
    `..data`, which is swapped atomically to a new directory."""
    version = mount / f"..{time.time_ns()}"
    version.mkdir(parents=True)
    (version / name).write_text(json.dumps(document))
    link = mount / "..data_tmp"
    link.symlink_to(version.name)
    link.replace(mount / "..data")
    if not (mount / name).is_symlink():
        (mount / name).symlink_to(f"..data/{name}")


async def test_a_revocation_added_to_the_mounted_keyring_is_used_without_a_restart(
    tmp_path: Path, nats_server: Nats, storage_service: Any
) -> None:
    signers = endorser_ring(tmp_path / "signers")
    keyring = tmp_path / "keyring"
    swap_secret(keyring, "trusted.json", public_only(signers).to_document())
    async with storage_service() as (_, address):
        settings = publisher_settings(
            tmp_path,
            address,
            nats_server.url,
            keyring_dir=keyring,
            endorser_key_dir=tmp_path / "signers",
            keyring_reload_seconds=0.2,
        )
        publisher = await build(settings)
        try:
            market = publisher.core.market
            assert market is not None
            # The session's NATS holds other tests' entries: this image is new.
            first = await market.publish(facts_for(f"image {time.time_ns()}".encode()), ENDORSER)
            assert (await market.get(first.identifier)).entry.sequence == 1
            # A malformed file keeps the keyring in use, and the watcher alive.
            swap_secret(keyring, "trusted.json", {"keys": 5, "revoked_endorsers": [1]})
            await asyncio.sleep(1.0)  # five looks at the files
            assert (await market.get(first.identifier)).entry.sequence == 1
            revoked = {**public_only(signers).to_document(), "revoked_endorsers": [ENDORSER]}
            swap_secret(keyring, "trusted.json", revoked)

            async def distrusted() -> bool:
                try:
                    await market.get(first.identifier)
                except NotFound:
                    return True  # an untrusted entry is not served
                return False

            await await_until("the revocation to be used", distrusted, timeout=10)
            with pytest.raises(Rejected, match="revoked"):
                verify(first.document, market.keys)
            with pytest.raises(FailedPrecondition, match="revoked"):
                await market.publish(facts_for(b"other image"), ENDORSER)
        finally:
            await publisher.stop()


async def test_download_refuses_deprecated_and_expired_entries_and_replies_carry_guards(
    tmp_path: Path, nats_server: Nats
) -> None:
    """/download sends no one to an image its endorser no longer vouches for;
    every reply, errors and redirects too, is nosniff and under a CSP."""
    keys = endorser_ring(tmp_path / "keys")
    async with market(nats_server.url, keys) as one, serving(make_app(one)) as base:
        valid = await one.publish(facts_for(f"valid {time.time_ns()}".encode()), ENDORSER)
        gone = await one.publish(facts_for(f"deprecated {time.time_ns()}".encode()), ENDORSER)
        await one.deprecate(gone.identifier)
        past = datetime.now(UTC) - timedelta(hours=2)
        old = facts_for(f"expired {time.time_ns()}".encode())
        expired = await one.publish(old, ENDORSER, valid_for=timedelta(hours=1), now=past)
        async with aiohttp.ClientSession(base) as http:
            for signed, status in ((gone, "deprecated"), (expired, "expired")):
                path = f"/api/v1/entries/{signed.identifier}/download"
                async with http.get(path, allow_redirects=False) as r:
                    assert r.status == 410 and status in (await r.json())["message"]
                    assert r.headers["X-Content-Type-Options"] == "nosniff"
            good = f"/api/v1/entries/{valid.identifier}/download"
            async with http.get(good, allow_redirects=False) as r:
                assert r.status == 307
            for path in ("/", "/api/v1/entries", good, "/api/v1/entries/" + "A" * 27):
                async with http.get(path, allow_redirects=False) as r:
                    assert r.headers["X-Content-Type-Options"] == "nosniff", path
                    assert "default-src 'none'" in r.headers["Content-Security-Policy"], path


async def test_a_search_checks_each_stored_statement_once_until_the_keyring_changes(
    tmp_path: Path, nats_server: Nats
) -> None:
    from kiln_market import Keyring

    keys = endorser_ring(tmp_path / "keys")
    async with market(nats_server.url, keys) as one:
        signed = await one.publish(facts_for(f"cached {time.time_ns()}".encode()), ENDORSER)
        query = Query(identifier=signed.identifier)
        assert [s.identifier for s in await one.search(query)] == [signed.identifier]
        checked = one.signatures_checked
        for _ in range(3):
            assert [s.identifier for s in await one.search(query)] == [signed.identifier]
        assert one.signatures_checked == checked  # the same revision: not checked again
        one.keys = Keyring.load(tmp_path / "keys")  # a reloaded keyring checks afresh
        assert [s.identifier for s in await one.search(query)] == [signed.identifier]
        assert one.signatures_checked > checked


async def test_an_entrys_history_holds_its_statements_and_an_old_bucket_starts_keeping_them(
    tmp_path: Path, nats_server: Nats
) -> None:
    """A bucket made when the store kept one statement per key is raised to
    HISTORY on first use; from then on each statement stays, verified again
    and told apart when read back."""
    from kiln_common.events import NoEvents
    from kiln_common.jetstream import key_value
    from kiln_publisher.market import Market
    from kiln_publisher.market.history import HISTORY

    keys = endorser_ring(tmp_path / "keys")
    bucket = f"OLD_MARKET_{time.time_ns()}"
    nc = await nats.connect(nats_server.url)
    try:
        js = nc.jetstream()
        await key_value(js, bucket, history=1)  # as the store made it before
        one = Market(js, keys, NoEvents(), bucket=bucket)
        facts = facts_for(f"history {time.time_ns()}".encode())
        past = datetime.now(UTC) - timedelta(days=2)
        await one.publish(facts, ENDORSER, valid_for=timedelta(days=1), now=past)
        assert (await js.stream_info(f"KV_{bucket}")).config.max_msgs_per_subject == HISTORY
        renewed = await one.publish(facts, ENDORSER)
        await one.deprecate(renewed.identifier)
        current = await one.get(renewed.identifier)
        steps = await one.history(current)
        # Read once per newest statement: a page read again asks NATS for no consumer.
        assert await one.history(current) is steps
    finally:
        await nc.close()
    assert [(s.entry.sequence, s.what) for s in steps] == [
        (1, "published"),
        (2, "endorsed again, superseding #1"),
        (3, "deprecated"),
    ]
    assert steps[0].entry.created < steps[1].entry.created <= steps[2].entry.created
