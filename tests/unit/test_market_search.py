"""Marketplace search filters and the HTML catalogue's rendering."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from market_support import ENDORSER, endorser_ring, facts_for

from kiln_common.errors import InvalidArgument
from kiln_market import Endorser, Entry, new_entry, sign
from kiln_publisher.market import Query
from kiln_publisher.market.catalogue import render_catalogue

NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
WHO = Endorser(ENDORSER, "kid")


def entry(data: bytes = b"image", days: int = 30, **facts: str) -> Entry:
    return new_entry(facts_for(data, **facts), WHO, NOW, timedelta(days=days))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("query", "hit"),
    [
        (Query(), True),
        (Query(os="Debian"), True),
        (Query(os="almalinux"), False),
        (Query(os_version="12"), True),
        (Query(os_version="11"), False),
        (Query(arch="x86_64"), True),
        (Query(arch="aarch64"), False),
        (Query(endorser="OPS@example.org"), True),
        (Query(endorser="other@example.org"), False),
        (Query(status="valid"), True),
        (Query(status="expired"), False),
        (Query(text="web NGINX"), True),  # title and description, any case
        (Query(text="bookworm debian x86_64"), True),
        (Query(text="apache"), False),
        (Query(os="debian", arch="aarch64"), False),  # every filter must match
    ],
)
def test_each_filter_matches_its_field(query: Query, hit: bool) -> None:
    assert query.matches(entry(), NOW) is hit


def test_the_status_filter_follows_the_clock_and_the_marks() -> None:
    short = entry(days=1)
    later = NOW + timedelta(days=2)
    assert Query(status="expired").matches(short, later)
    assert not Query(status="valid").matches(short, later)
    assert Query(status="deprecated").matches(short.successor(NOW, deprecated=True), NOW)


def test_an_unknown_status_is_refused() -> None:
    with pytest.raises(InvalidArgument, match="status is one of valid, expired, deprecated"):
        Query(status="old")


def test_the_catalogue_escapes_every_value_and_links_the_first_location(tmp_path: Path) -> None:
    ring = endorser_ring(tmp_path)
    signer = ring.signer(ENDORSER)
    hostile = new_entry(
        facts_for(
            b"image",
            title="<script>alert(1)</script>",
            description='"><img src=x onerror=alert(1)>',
            locations=("https://storage.example.org/a?x=1&sig=2", "https://mirror.example.org/b"),
        ),
        Endorser(signer.email, signer.kid),
        NOW,
        timedelta(days=1),
    )
    page = render_catalogue([sign(hostile, signer)], Query(text="<b>"), NOW)
    assert "<script>" not in page and "<img" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert 'class="download" href="https://storage.example.org/a?x=1&amp;sig=2"' in page
    assert 'value="&lt;b&gt;"' in page
    assert 'class="status status-valid"' in page
    assert f'href="/entries/{hostile.identifier}?endorser=ops%40example.org"' in page


def test_a_location_that_is_not_a_web_url_gets_no_link(tmp_path: Path) -> None:
    ring = endorser_ring(tmp_path)
    signer = ring.signer(ENDORSER)
    odd = new_entry(
        facts_for(b"image", locations=("javascript:alert(1)",)),
        Endorser(signer.email, signer.kid),
        NOW,
        timedelta(days=1),
    )
    page = render_catalogue([sign(odd, signer)], Query(), NOW)
    assert "javascript:" not in page and "no location" in page
