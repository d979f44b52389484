"""The HTML catalogue: one server-rendered page, every value escaped, a plain
GET form for the filters (so a filtered view is a URL to share or reload),
and a link from each entry to its own page (entry_page)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from html import escape

from kiln_market.entry import STATUSES
from kiln_market.signing import SignedEntry
from kiln_publisher.market import page
from kiln_publisher.market.links import links
from kiln_publisher.market.query import Query


def _field(name: str, label: str, value: str | None) -> str:
    return f'<label>{label} <input name="{name}" value="{escape(value or "")}" size="10"></label>'


def _form(query: Query) -> str:
    options = "".join(
        f'<option value="{s}"{" selected" if query.status == s else ""}>{s or "any"}</option>'
        for s in ("", *STATUSES)
    )
    return (
        '<form method="get" action="/">'
        + _field("text", "Search", query.text)
        + _field("os", "OS", query.os)
        + _field("os_version", "Version", query.os_version)
        + _field("arch", "Arch", query.arch)
        + _field("endorser", "Endorser", query.endorser)
        + f'<label>Status <select name="status">{options}</select></label>'
        + '<button type="submit">Filter</button> <a href="/">clear</a></form>'
    )


def download_link(signed: SignedEntry, redirect: bool) -> str:
    target = links(signed.entry, redirect)["download"]
    if target and (redirect or page.web_url(target)):
        return f'<a class="download" href="{escape(target)}">download</a>'
    return "no location"


def _row(signed: SignedEntry, now: datetime, redirect: bool) -> str:
    e = signed.entry
    status = e.status(now)
    compression = f" / {escape(e.compression)}" if e.compression else ""
    cells = [
        ("", f'<a class="title" href="{escape(page.entry_path(e))}">{escape(e.title)}</a>'
             f'<br><small>{escape(e.description)}</small>'
             f'<br><code class="identifier">{escape(e.identifier)}</code>'),
        ("OS", f"{escape(e.os)} {escape(e.os_version)}"),
        ("Arch", escape(e.arch)),
        ("Format", f"{escape(e.format)}{compression}, {page.size(e.size)}"),
        ("Endorser", escape(e.endorser.email)),
        ("Signed", page.when(e.created)),  # its newest statement: a deprecation is one
        ("Status", f"{page.status(status)}<br><small>until {page.when(e.valid_until)}</small>"),
        ("", download_link(signed, redirect)),
    ]  # fmt: skip
    tds = "".join(
        f'<td data-label="{label}">{cell}</td>' if label else f"<td>{cell}</td>"
        for label, cell in cells
    )
    return f'<tr class="entry" id="{escape(e.identifier)}">{tds}</tr>'


HEADS = ("Image", "OS", "Arch", "Format", "Endorser", "Signed", "Status", "Links")


def render_catalogue(
    entries: Sequence[SignedEntry], query: Query, now: datetime, redirect: bool = False
) -> str:
    header = "".join(f"<th>{h}</th>" for h in HEADS)
    rows = "".join(_row(s, now, redirect) for s in entries) or (
        f'<tr><td colspan="{len(HEADS)}">No entries match.</td></tr>'
    )
    count = f"{len(entries)} entr{'y' if len(entries) == 1 else 'ies'}"
    body = (
        f"{_form(query)}<p>{count}. Each entry's page has its checksums, packages, history"
        " and the command that verifies its signature.</p>"
        f"<table><thead><tr>{header}</tr></thead><tbody>{rows}</tbody></table>"
    )
    return page.document("Kiln marketplace", body)
