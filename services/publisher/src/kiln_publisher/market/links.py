"""The marketplace's URLs, shared by the JSON API and the HTML catalogue."""

from __future__ import annotations

from urllib.parse import quote

from kiln_market.entry import Entry

API = "/api/v1/entries"


def download_path(identifier: str, endorser: str) -> str:
    """The path of an entry's stable download link (a redirect to a URL
    signed when it is followed)."""
    return f"{API}/{identifier}/download?endorser={quote(endorser)}"


def sbom_path(entry: Entry) -> str:
    """The path of the entry's SBOM (the SPDX document its sbom_sha256 signs)."""
    return f"{API}/{entry.identifier}/sbom.spdx.json?endorser={quote(entry.endorser.email)}"


def is_download_link(url: str) -> bool:
    return f"{API}/" in url and "/download?" in url


def links(entry: Entry, redirect: bool) -> dict[str, str | None]:
    """The entry's links; with redirect, download goes through this app,
    which sends the browser on to a freshly signed URL."""
    base = f"{API}/{entry.identifier}"
    by = f"?endorser={quote(entry.endorser.email)}"
    first = entry.locations[0] if entry.locations else None
    return {
        "self": base + by,
        "document": f"{base}/entry.json{by}",
        "download": download_path(entry.identifier, entry.endorser.email) if redirect else first,
    }
