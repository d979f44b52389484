"""The HTML catalogue: one server-rendered page, every value escaped, a plain
GET form for the filters, so any browser (or none) can use it."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from html import escape
from urllib.parse import urlparse

from kiln_market.entry import STATUSES
from kiln_market.signing import SignedEntry
from kiln_publisher.market.links import links
from kiln_publisher.market.query import Query

_STYLE = """
body { font-family: sans-serif; margin: 2em; }
table { border-collapse: collapse; width: 100%; }
th, td { border-bottom: 1px solid #ccc; padding: .4em; text-align: left; vertical-align: top; }
code { font-size: .8em; word-break: break-all; }
.status-valid { color: #060; } .status-expired, .status-deprecated { color: #a00; }
"""


def _field(name: str, label: str, value: str | None) -> str:
    return f'<label>{label} <input name="{name}" value="{escape(value or "")}" size="10"></label> '


def _form(query: Query) -> str:
    options = "".join(
        f'<option value="{s}"{" selected" if query.status == s else ""}>{s}</option>'
        for s in ("", *STATUSES)
    )
    return (
        '<form method="get" action="/">'
        + _field("text", "Search", query.text)
        + _field("os", "OS", query.os)
        + _field("os_version", "Version", query.os_version)
        + _field("arch", "Arch", query.arch)
        + _field("endorser", "Endorser", query.endorser)
        + f'<label>Status <select name="status">{options}</select></label> '
        + '<button type="submit">Filter</button></form>'
    )


def _web_url(url: str) -> bool:
    # An entry is only as trusted as its endorser: no javascript: links.
    return urlparse(url).scheme in ("http", "https")


def _row(signed: SignedEntry, now: datetime, redirect: bool) -> str:
    e = signed.entry
    status = e.status(now)
    link = links(e, redirect)
    target = link["download"]
    download = (
        f'<a class="download" href="{escape(target)}">download</a>'
        if target and (redirect or _web_url(target))
        else "no location"
    )
    document = link["document"] or ""
    sums = "<br>".join(
        f"{name}: <code>{escape(getattr(e.checksums, name))}</code>"
        for name in ("sha256", "sha512", "sha1", "md5")
    )
    compression = f" / {escape(e.compression)}" if e.compression else ""
    cells = [
        f'<strong class="title">{escape(e.title)}</strong>'
        f"<br><small>{escape(e.description)}</small>"
        f'<br><code class="identifier">{escape(e.identifier)}</code>',
        escape(e.os),
        escape(e.os_version),
        escape(e.arch),
        f"{escape(e.format)}{compression}<br>{e.size} bytes",
        f"{escape(e.endorser.email)}<br><small>key <code>{escape(e.endorser.kid)}</code></small>",
        f'<span class="status status-{status}">{status}</span>'
        f"<br><small>until {escape(e.valid_until)}</small>",
        sums,
        f'{download}<br><a class="signed" href="{escape(document)}">signed entry</a>',
    ]
    tds = "".join(f"<td>{cell}</td>" for cell in cells)
    return f'<tr class="entry" id="{escape(e.identifier)}">{tds}</tr>'


def render_catalogue(
    entries: Sequence[SignedEntry], query: Query, now: datetime, redirect: bool = False
) -> str:
    heads = ["Image", "OS", "Version", "Arch", "Format", "Endorser", "Status", "Checksums", "Links"]
    header = "".join(f"<th>{h}</th>" for h in heads)
    rows = "".join(_row(s, now, redirect) for s in entries) or (
        f'<tr><td colspan="{len(heads)}">No entries match.</td></tr>'
    )
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        "<title>Kiln marketplace</title>"
        f"<style>{_STYLE}</style></head><body>"
        f"<h1>Kiln marketplace</h1>{_form(query)}"
        f"<p>{len(entries)} entr{'y' if len(entries) == 1 else 'ies'}. "
        "Verify a signed entry offline with <code>kiln market verify --file entry.json</code>.</p>"
        f"<table><thead><tr>{header}</tr></thead><tbody>{rows}</tbody></table>"
        "</body></html>"
    )
