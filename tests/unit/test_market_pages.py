"""The marketplace pages' pieces: human sizes and times, an entry's page
(every value escaped, its fields, packages, verify commands and history),
and the packages read from an SPDX document."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from market_support import ENDORSER, endorser_ring, facts_for

from kiln_builder.sbom import Package as DebPackage
from kiln_builder.sbom import spdx_document
from kiln_cli import progress
from kiln_common import humane as sizes
from kiln_market import Endorser, new_entry, sign
from kiln_market.signing import SignedEntry
from kiln_publisher.market import humane, page
from kiln_publisher.market.entry_page import MAX_ROWS, EntryView, render_entry, verify_commands
from kiln_publisher.market.history import steps
from kiln_publisher.market.sbom import NO_SBOM, UNAVAILABLE, Listing, Package, packages

NOW = datetime(2026, 12, 7, 9, 41, 27, 123456, tzinfo=UTC)


@pytest.mark.parametrize(
    ("count", "text"),
    [
        (0, "0 B"),
        (1023, "1023 B"),
        (1024, "1 KiB"),
        (256 * 1024, "256 KiB"),
        (int(1.4 * 2**30), "1.4 GiB"),
        (12 * 2**30 + 2**29, "12 GiB"),
        (3 * 2**50, "3 PiB"),
        (5000 * 2**50, "5000 PiB"),
        (2.0 * 2**20, "2 MiB"),  # a transfer's rate, a float: the CLI says it the same way
        (1.55 * 2**20, "1.6 MiB"),
    ],
)
def test_sizes_read_in_binary_units(count: float, text: str) -> None:
    assert sizes.size(count) == text
    assert progress.humane.size(count) == text  # the CLI's transfer lines: the one formatter


def test_times_read_to_the_minute_in_utc_and_keep_the_exact_value() -> None:
    assert humane.moment("2026-12-07T10:41:27.123456+01:00") == "2026-12-07 09:41 UTC"
    element = page.when("2026-12-07T09:41:27.123456Z")
    assert element == '<time datetime="2026-12-07T09:41:27.123456Z">2026-12-07 09:41 UTC</time>'


def signed_entry(tmp_path: Path, **facts: str) -> SignedEntry:
    signer = endorser_ring(tmp_path).signer(ENDORSER)
    entry = new_entry(
        facts_for(b"image", **facts),  # type: ignore[arg-type]
        Endorser(signer.email, signer.kid),
        NOW,
        timedelta(days=30),
    )
    return sign(entry, signer)


def test_an_entry_page_escapes_every_value_and_shows_fields_packages_and_history(
    tmp_path: Path,
) -> None:
    signed = signed_entry(
        tmp_path,
        title="<script>alert(1)</script>",
        description='"><img src=x onerror=alert(1)>',
        locations=("javascript:alert(1)", "https://storage.example.org/a?x=1&sig=2"),
    )
    later = signed.entry.successor(NOW + timedelta(days=1), deprecated=True)
    hostile = Package("<b>bash</b>", "5.2&1", "amd64")
    view = EntryView(
        signed, steps([later, signed.entry]), Listing("listed", (hostile,)), "http://127.0.0.1:1"
    )
    html = render_entry(view, NOW + timedelta(days=1))
    assert "<script>" not in html and "<img" not in html and "<b>bash" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html and "&lt;b&gt;bash&lt;/b&gt;" in html
    assert 'href="javascript:' not in html  # shown as text, never linked
    assert 'href="https://storage.example.org/a?x=1&amp;sig=2"' in html
    assert signed.entry.checksums.sha512 in html
    history = re.findall(r'<tr class="step">(.*?)</tr>', html)
    assert ["published" in history[0], "deprecated" in history[1]] == [True, True]
    assert f"/api/v1/entries/{signed.identifier}/sbom.spdx.json?endorser=" in html


def test_the_verify_commands_name_the_identifier_and_the_signed_documents_url(
    tmp_path: Path,
) -> None:
    signed = signed_entry(tmp_path)
    view = EntryView(signed, [], NO_SBOM, "http://127.0.0.1:8080")
    lines = verify_commands(view).splitlines()
    document = (
        f"http://127.0.0.1:8080/api/v1/entries/{signed.identifier}/entry.json"
        "?endorser=ops%40example.org"
    )
    assert lines == [
        # This endorser's statement: not whichever endorser's is newest.
        f"kiln market verify {signed.identifier} --endorser ops@example.org",
        "# or offline, from the signed document:",
        f"curl -fsSL -o {signed.identifier}.json '{document}'",  # ? would glob
        f"kiln market verify --file {signed.identifier}.json",
    ]
    assert "No SBOM is stored" in render_entry(view, NOW)


def test_a_page_lists_at_most_max_rows_packages_and_links_the_rest(tmp_path: Path) -> None:
    signed = signed_entry(tmp_path)
    many = tuple(Package(f"p{i:05}", "1", "amd64") for i in range(MAX_ROWS + 3))
    html = render_entry(EntryView(signed, [], Listing("listed", many), "http://h"), NOW)
    assert html.count('<tr class="package">') == MAX_ROWS
    assert f"{MAX_ROWS + 3} packages" in html and "3 more packages are not listed here" in html
    assert f"/api/v1/entries/{signed.identifier}/sbom.spdx.json?endorser=" in html


def test_a_page_links_an_sbom_too_large_to_list_and_says_so(tmp_path: Path) -> None:
    signed = signed_entry(tmp_path)
    html = render_entry(EntryView(signed, [], Listing("large", size=40 << 20), "http://h"), NOW)
    assert '<tr class="package">' not in html
    assert "The SBOM (40 MiB) is larger than this page lists (16 MiB)" in html
    assert "download the SBOM" in html


def test_a_page_whose_sbom_cannot_be_read_now_says_so_and_shows_the_rest(
    tmp_path: Path,
) -> None:
    signed = signed_entry(tmp_path)
    html = render_entry(EntryView(signed, [], UNAVAILABLE, "http://h"), NOW)
    assert "The SBOM is not available right now" in html
    assert signed.entry.checksums.sha512 in html and "Verify it" in html


def test_an_sbom_lists_its_packages_without_the_image_itself() -> None:
    debs = [
        DebPackage("zlib1g", "1:1.2.13", "amd64", "zlib", "1:1.2.13"),
        DebPackage("bash", "5.2.15-2+b2", "amd64", "bash", "5.2.15-2"),
    ]
    document = spdx_document(debs, name="web", namespace_seed="s", created_epoch=0)
    listed = packages(json.dumps(document).encode())
    assert listed == [
        Package("bash", "5.2.15-2+b2", "amd64"),
        Package("zlib1g", "1:1.2.13", "amd64"),
    ]


@pytest.mark.parametrize(
    ("document", "listed"),
    [
        (b"", []),
        (b"[]", []),
        (b'{"packages": 3}', []),
        (b'{"packages": [1, {"name": 2}, {"name": "a", "externalRefs": 5}]}',
         [Package("", "", ""), Package("a", "", "")]),
    ],
)  # fmt: skip
def test_a_document_that_is_not_spdx_lists_only_what_it_can_read(
    document: bytes, listed: list[Package]
) -> None:
    assert packages(document) == listed


def test_the_content_security_policy_allows_the_pages_own_style_alone() -> None:
    assert "'unsafe-inline'" not in page.CSP and "script-src" not in page.CSP
    assert f"style-src 'sha256-{page.STYLE_HASH}'" in page.CSP
    html = page.document("t", "")
    assert f"<style>{page.STYLE}</style>" in html and 'name="viewport"' in html


def test_each_statement_in_a_history_says_what_it_did(tmp_path: Path) -> None:
    first = signed_entry(tmp_path).entry
    later = NOW + timedelta(days=40)
    expired = first.successor(later, expired=True)
    again = expired.successor(later, expired=False, valid_until="2027-12-07T00:00:00.000000Z")
    gone = again.successor(later, deprecated=True)
    listed = steps([gone, first, again, expired])  # any order in, oldest first out
    assert [(s.entry.sequence, s.what) for s in listed] == [
        (1, "published"),
        (2, "expired"),
        (3, "endorsed again, superseding #2"),
        (4, "deprecated"),
    ]
