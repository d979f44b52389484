"""One entry's page: every field, the packages of its signed SBOM, the
command lines that verify it, and its history. Every value is escaped: the
entry and its SBOM come from strangers."""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from html import escape

from kiln_common.humane import size as human_size
from kiln_market.signing import SignedEntry
from kiln_publisher.market import page
from kiln_publisher.market.catalogue import download_link
from kiln_publisher.market.history import Step
from kiln_publisher.market.links import links, sbom_path
from kiln_publisher.market.sbom import PAGE_SBOM, Listing

MAX_ROWS = 5000  # packages listed on a page; the SBOM download has them all


@dataclass(frozen=True)
class EntryView:
    """What the page shows besides the entry: read by the HTTP handler."""

    signed: SignedEntry
    history: Sequence[Step]
    sbom: Listing
    origin: str  # the public URL (scheme://host[:port]) for the command lines
    redirect: bool = False


def _fields(view: EntryView, now: datetime) -> str:
    e = view.signed.entry
    rows: list[tuple[str, str]] = [
        ("Status", page.status(e.status(now))),
        ("Valid until", page.when(e.valid_until)),
        ("Identifier", f'<code class="identifier">{escape(e.identifier)}</code>'),
        ("Description", escape(e.description) or '<span class="muted">none</span>'),
        ("Image version", escape(e.version or "") or '<span class="muted">not given</span>'),
        ("OS", f"{escape(e.os)} {escape(e.os_version)}"),
        ("Architecture", escape(e.arch)),
        ("Hypervisor", escape(e.hypervisor)),
        ("Format", escape(e.format) + (f" / {escape(e.compression)}" if e.compression else "")),
        ("Size", f"{page.size(e.size)} ({e.size} bytes)"),
        ("Creator", escape(e.creator)),
        ("Endorser", f"{escape(e.endorser.email)}<br>key <code>{escape(e.endorser.kid)}</code>"),
        ("Signed", f"{page.when(e.created)}, statement #{e.sequence}"),
        ("Artifact", f"<code>{escape(e.artifact_id)}</code>"),
        *((name.upper(), f"<code>{escape(getattr(e.checksums, name))}</code>")
          for name in ("sha256", "sha512", "sha1", "md5")),
        ("SBOM SHA-256", f"<code>{escape(e.sbom_sha256)}</code>" if e.sbom_sha256 else "none"),
        ("Locations", "<br>".join(_location(u) for u in e.locations) or "none"),
    ]  # fmt: skip
    items = "".join(f"<dt>{name}</dt><dd>{value}</dd>" for name, value in rows)
    return f'<dl class="fields">{items}</dl>'


def _location(url: str) -> str:
    text = f"<code>{escape(url)}</code>"
    return f'<a href="{escape(url)}">{text}</a>' if page.web_url(url) else text


def _links(view: EntryView) -> str:
    document = links(view.signed.entry, view.redirect)["document"] or ""
    sbom = (
        f' · <a class="sbom" href="{escape(sbom_path(view.signed.entry))}">SBOM (SPDX JSON)</a>'
        if view.sbom.state != "none"
        else ""
    )
    return (
        f"<p>{download_link(view.signed, view.redirect)}"
        f' · <a class="signed" href="{escape(document)}">signed entry</a>{sbom}</p>'
    )


def verify_commands(view: EntryView) -> str:
    """The commands that check the entry's signature: against the publisher
    the CLI is set up for (this endorser's statement, not the newest of any
    endorser's), or offline from the signed document."""
    e = view.signed.entry
    saved = f"{e.identifier}.json"
    document = view.origin + (links(e, False)["document"] or "")
    return "\n".join((
        f"kiln market verify {e.identifier} --endorser {shlex.quote(e.endorser.email)}",
        "# or offline, from the signed document:",
        f"curl -fsSL -o {saved} {shlex.quote(document)}",
        f"kiln market verify --file {saved}",
    ))  # fmt: skip


def _download(view: EntryView) -> str:
    path = escape(sbom_path(view.signed.entry))
    return f'<a class="sbom" href="{path}">download the SBOM (SPDX JSON)</a>'


def _packages(view: EntryView) -> str:
    sbom = view.sbom
    if sbom.state == "none":
        return '<p class="muted">No SBOM is stored for this image.</p>'
    if sbom.state == "unavailable":
        return (
            '<p class="muted unavailable">The SBOM is not available right now;'
            f" try again later, or {_download(view)}.</p>"
        )
    if sbom.state == "large":
        return (
            f'<p class="muted large">The SBOM ({human_size(sbom.size)}) is larger than'
            f" this page lists ({human_size(PAGE_SBOM)}): {_download(view)}.</p>"
        )
    shown = sbom.packages[:MAX_ROWS]
    rows = "".join(
        f'<tr class="package"><td>{escape(p.name)}</td><td data-label="Version">'
        f'{escape(p.version)}</td><td data-label="Arch">{escape(p.arch)}</td></tr>'
        for p in shown
    )
    more = len(sbom.packages) - len(shown)
    rest = (
        f'<p class="more">{more} more packages are not listed here: {_download(view)}.</p>'
        if more > 0
        else ""
    )
    return (
        f"<p>{len(sbom.packages)} packages, from the SBOM whose SHA-256 the entry signs.</p>"
        "<table><thead><tr><th>Package</th><th>Version</th><th>Arch</th></tr></thead>"
        f'<tbody class="packages">{rows}</tbody></table>{rest}'
    )


def _history(view: EntryView) -> str:
    rows = "".join(
        f'<tr class="step"><td>#{s.entry.sequence}</td><td>{page.when(s.entry.created)}</td>'
        f'<td>{escape(s.what)}</td><td data-label="Valid until">'
        f"{page.when(s.entry.valid_until)}</td></tr>"
        for s in view.history
    )
    return (
        "<table><thead><tr><th>Statement</th><th>Signed</th><th>What</th>"
        f'<th>Valid until</th></tr></thead><tbody class="history">{rows}</tbody></table>'
    )


def render_entry(view: EntryView, now: datetime) -> str:
    e = view.signed.entry
    body = (
        f'<p><a href="/">← all entries</a></p><h2 class="title">{escape(e.title)}</h2>'
        f"{_links(view)}{_fields(view, now)}"
        "<h3>Verify it</h3><p>With the endorser's public key in your keyring"
        " (<code>--keyring</code>):</p>"
        f'<pre class="verify">{escape(verify_commands(view))}</pre>'
        f"<h3>Packages</h3>{_packages(view)}"
        f"<h3>History</h3>{_history(view)}"
    )
    return page.document(f"{e.title} · Kiln marketplace", body)
