"""The marketplace's URLs, shared by the JSON API and the HTML catalogue."""

from __future__ import annotations

from urllib.parse import quote

from kiln_market.entry import Entry

API = "/api/v1/entries"


def links(entry: Entry, redirect: bool) -> dict[str, str | None]:
    """The entry's links; with redirect, download goes through this app,
    which sends the browser on to a freshly signed URL."""
    base = f"{API}/{entry.identifier}"
    by = f"?endorser={quote(entry.endorser.email)}"
    first = entry.locations[0] if entry.locations else None
    return {
        "self": base + by,
        "document": f"{base}/entry.json{by}",
        "download": f"{base}/download{by}" if redirect else first,
    }
