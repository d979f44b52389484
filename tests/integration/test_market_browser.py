"""The marketplace's pages in headless Chromium, against real NATS, a real
storage service (the image and its SBOM stored there, labelled as the
builder labels them) and the publisher's marketplace app: human sizes and
times, an entry's own page (fields, the signed SBOM's packages, the verify
command lines, its history), a filter kept in the URL across a reload, and a
phone-width layout that never scrolls sideways. Screenshots go to
.cache/screenshots (docs/images/ holds copies). And the publisher as it runs
serves the entry page, whose verify command lines the CLI accepts."""

from __future__ import annotations

import asyncio
import hashlib
import html
import json
import re
import shlex
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from market_support import (
    ENDORSER,
    IMAGE_LABELS,
    endorser_ring,
    facts_for,
    market,
    public_only,
    publisher_settings,
    store,
    stored_image,
)
from playwright.async_api import Browser, BrowserContext, Page
from support import REPO, payload

from kiln_builder.sbom import Package, spdx_document
from kiln_cli.main import main
from kiln_client.storage import AsyncStorageClient
from kiln_devstack.devservers import Nats, free_port
from kiln_market import Entry, Keyring, verify
from kiln_market.signing import SignedEntry
from kiln_publisher.app import build
from kiln_publisher.market import make_app
from kiln_publisher.market.sbom import StoredSboms

pytestmark = pytest.mark.integration

SHOTS = REPO / ".cache" / "screenshots"
BUILD = "01kilnbrowsertestbuild0000"
HOSTILE = "<script>alert('pkg')</script>"
DEBS = [
    Package("bash", "5.2.15-2+b2", "amd64", "bash", "5.2.15-2"),
    Package("nginx", "1.22.1-9", "amd64", "nginx", "1.22.1-9"),
    Package(HOSTILE, "1", "amd64", "x", "1"),
]
GIB_1_4 = int(1.4 * 2**30)
MINUTE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d UTC$")


@asynccontextmanager
async def serving(app: web.Application) -> AsyncIterator[str]:
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


@asynccontextmanager
async def watched_page(
    chromium: Browser, width: int, height: int
) -> AsyncIterator[tuple[Page, list[str]]]:
    """A page at this viewport, and what it complained of: dialogs (a value
    run as script) and console errors (a style the CSP refused)."""
    context: BrowserContext = await chromium.new_context(
        viewport={"width": width, "height": height}, device_scale_factor=1
    )
    try:
        page = await context.new_page()
        trouble: list[str] = []
        page.on("dialog", lambda d: trouble.append(f"dialog: {d.message}"))
        page.on("console", lambda m: trouble.append(m.text) if m.type == "error" else None)
        yield page, trouble
    finally:
        await context.close()


async def publish_both(one: Any, address: str, sbom: bytes) -> tuple[SignedEntry, SignedEntry]:
    """The stored Debian image (signed twice: published, expired, endorsed
    again) with its SBOM, and an Alma entry of 1.4 GiB not stored here."""
    labels = {**IMAGE_LABELS, "build-id": BUILD, "kiln-kind": "image"}
    facts = await stored_image(address, payload(256 * 1024, seed=11), labels, sbom)
    await store(address, sbom, {"name": "web", "build-id": BUILD, "kiln-kind": "sbom"})
    past = datetime.now(UTC) - timedelta(days=2)
    await one.publish(facts, ENDORSER, valid_for=timedelta(days=1), now=past)
    debian = await one.publish(facts, ENDORSER)
    alma = await one.publish(
        replace(
            facts_for(
                b"alma",
                os="almalinux",
                os_version="9",
                arch="aarch64",
                title="AlmaLinux 9 base",
                description="a minimal cloud image",
            ),
            size=GIB_1_4,
        ),
        ENDORSER,
    )
    return debian, alma


async def fits(page: Page) -> bool:
    """Nothing sticks out sideways: no horizontal scrolling."""
    return bool(await page.evaluate("document.documentElement.scrollWidth <= window.innerWidth"))


async def check_list(page: Page, debian: Entry, alma: Entry) -> None:
    row = page.locator("tr.entry").filter(has_text=debian.title)
    assert await row.locator(".size").inner_text() == "256 KiB"
    assert await row.locator(".size").get_attribute("title") == f"{256 * 1024} bytes"
    published = row.locator("time").first
    assert MINUTE.match(await published.inner_text())
    assert await published.get_attribute("datetime") == debian.created
    other = page.locator("tr.entry").filter(has_text=alma.title)
    assert await other.locator(".size").inner_text() == "1.4 GiB"


async def check_filter(page: Page, base: str, alma: Entry) -> None:
    """The form's filter lands in the URL; reloaded, the same view comes back."""
    await page.fill("input[name=arch]", "AARCH64")
    await page.select_option("select[name=status]", "valid")
    async with page.expect_navigation():
        await page.click("button[type=submit]")
    assert "arch=AARCH64" in page.url and "status=valid" in page.url
    for _ in range(2):
        assert await page.locator("tr.entry").count() == 1
        assert await page.locator("tr.entry .title").inner_text() == alma.title
        assert await page.input_value("input[name=arch]") == "AARCH64"
        assert await page.input_value("select[name=status]") == "valid"
        await page.reload()


async def check_entry_page(page: Page, debian: SignedEntry, sbom: bytes, keys: Keyring) -> None:
    e = debian.entry
    assert await page.locator("h2.title").inner_text() == e.title
    fields = await page.locator("dl.fields").inner_text()
    assert e.checksums.sha512 in fields and e.sbom_sha256 in fields and e.artifact_id in fields
    assert f"{e.size} bytes" in fields and e.endorser.kid in fields
    names = await page.locator("tbody.packages tr td:first-child").all_inner_texts()
    assert names == sorted(p.name for p in DEBS)  # the hostile one shown as text
    steps = await page.locator("tbody.history tr").all_inner_texts()
    assert len(steps) == 2 and "published" in steps[0] and "superseding #1" in steps[1]
    commands = (await page.locator("pre.verify").inner_text()).splitlines()
    assert commands[0] == f"kiln market verify {e.identifier} --endorser {e.endorser.email}"
    # The offline line's URL serves the signed document, which verifies.
    url = shlex.split(commands[2])[-1]
    got = await page.context.request.get(url)
    assert verify(await got.body(), public_only(keys)) == e
    link = await page.locator("a.sbom").get_attribute("href")
    assert link is not None
    served = await page.context.request.get(page.url.split("/entries/")[0] + link)
    assert served.status == 200 and await served.body() == sbom


async def test_chromium_reads_sizes_times_an_entrys_page_a_kept_filter_and_a_phone_layout(
    tmp_path: Path, nats_server: Nats, storage_service: Any, chromium: Browser
) -> None:
    keys = endorser_ring(tmp_path / "keys")
    document = spdx_document(DEBS, name="web", namespace_seed=BUILD, created_epoch=0)
    sbom = json.dumps(document, indent=2).encode()
    SHOTS.mkdir(parents=True, exist_ok=True)
    async with (
        storage_service() as (_, address),
        AsyncStorageClient(address) as storage,
        market(nats_server.url, keys) as one,
        serving(make_app(one, sbom=StoredSboms(storage))) as base,
    ):
        debian, alma = await publish_both(one, address, sbom)
        assert hashlib.sha256(sbom).hexdigest() == debian.entry.sbom_sha256
        async with watched_page(chromium, 1100, 640) as (page, trouble):
            await page.goto(base + "/")
            await check_list(page, debian.entry, alma.entry)
            await page.screenshot(path=SHOTS / "marketplace.png")
            await check_filter(page, base, alma.entry)
            await page.goto(base + "/")
            async with page.expect_navigation():
                await page.locator("tr.entry a.title").filter(has_text=debian.entry.title).click()
            assert page.url == f"{base}/entries/{debian.identifier}?endorser=ops%40example.org"
            await check_entry_page(page, debian, sbom, keys)
            await page.set_viewport_size({"width": 900, "height": 600})
            await page.screenshot(path=SHOTS / "marketplace-entry.png", full_page=True)
            assert trouble == []
        async with watched_page(chromium, 390, 844) as (phone, trouble):
            await phone.goto(base + "/")
            assert await fits(phone)
            assert await phone.locator("thead").first.is_hidden()  # rows are cards
            await phone.screenshot(path=SHOTS / "marketplace-phone.png")
            await phone.goto(f"{base}/entries/{debian.identifier}")
            assert await fits(phone)
            assert trouble == []


async def test_the_running_publishers_entry_page_lists_the_sbom_and_its_verify_lines_verify(
    tmp_path: Path, nats_server: Nats, storage_service: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The publisher as it runs (its own storage client reading the SBOM):
    the entry page's command lines, run through the CLI, accept the entry."""
    keys = endorser_ring(tmp_path / "keys")
    sbom = json.dumps(spdx_document(DEBS, name="web", namespace_seed=BUILD, created_epoch=0))
    monkeypatch.setenv("KILN_CONFIG", str(tmp_path / "no-config.yaml"))
    async with storage_service() as (_, address), market(nats_server.url, keys) as one:
        debian, _ = await publish_both(one, address, sbom.encode())
        # Readers reach it by its public URL (another name of this host
        # here): the command lines name that, not the Host a client sent.
        http_port = free_port()
        public = f"http://localhost:{http_port}"
        settings = publisher_settings(
            tmp_path, address, nats_server.url, http_port=http_port, public_url=public
        )
        publisher = await build(settings)
        try:
            port = await publisher.grpc.start()
            base = f"http://127.0.0.1:{publisher.http_port}"
            async with aiohttp.ClientSession(base) as http:
                page = f"/entries/{debian.identifier}"
                async with http.get(page, headers={"Host": "evil.example"}) as r:
                    assert r.status == 200
                    text = await r.text()
                pre = re.search(r'<pre class="verify">(.*?)</pre>', text, re.DOTALL)
                assert pre is not None and text.count('<tr class="package">') == len(DEBS)
                online, _, fetch, offline = html.unescape(pre[1]).splitlines()
                url = shlex.split(fetch)[-1]
                assert url.startswith(public + "/api/v1/entries/") and "evil" not in text
                assert shlex.split(online)[-2:] == ["--endorser", ENDORSER]
                async with http.get(url) as r:
                    (tmp_path / f"{debian.identifier}.json").write_bytes(await r.read())
                # A page's errors are pages too, escaped as the rest.
                for path, status, words in (
                    ("/entries/" + "A" * 27, 404, "no marketplace entry"),
                    ("/?status=<sideways>", 400, "not &#x27;&lt;sideways&gt;&#x27;"),
                ):
                    async with http.get(path) as r:
                        assert (r.status, r.content_type) == (status, "text/html")
                        assert words in await r.text()
            monkeypatch.chdir(tmp_path)  # where the curl line saved it
            for line in (online, offline):
                words = shlex.split(line)
                assert words[:3] == ["kiln", "market", "verify"]
                argv = ["--publisher", f"127.0.0.1:{port}", *words[1:]]
                argv += ["--keyring", str(tmp_path / "keys"), "--json"]
                # The CLI's client blocks: it runs beside this loop, which serves it.
                assert await asyncio.to_thread(main, argv) == 0, line
        finally:
            await publisher.stop()
