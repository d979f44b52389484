"""What every marketplace page shares: the document shell, its one style
sheet (inline, allowed by its hash in the Content-Security-Policy, so no
other style or any script can run), and the escaped building blocks."""

from __future__ import annotations

import base64
import hashlib
from html import escape
from urllib.parse import urlencode, urlparse

from kiln_common import humane as sizes
from kiln_market.entry import Entry
from kiln_publisher.market import humane

# A phone-width screen gets each table row as a card (labels from data-label)
# and wrapping text: nothing scrolls sideways at 390 px.
STYLE = """
* { box-sizing: border-box; }
body { font-family: system-ui, sans-serif; margin: 0 auto; padding: 1em; max-width: 80em;
  line-height: 1.4; overflow-wrap: break-word; }
h1 { font-size: 1.6em; margin: .2em 0 .5em; } h1 a { color: inherit; text-decoration: none; }
form { display: flex; flex-wrap: wrap; gap: .5em; align-items: end; margin-bottom: 1em; }
label { display: flex; flex-direction: column; font-size: .85em; }
input, select, button { font-size: 1em; max-width: 12em; }
table { border-collapse: collapse; width: 100%; }
th, td { border-bottom: 1px solid #ccc; padding: .4em; text-align: left; vertical-align: top; }
td small { display: inline-block; }
code, pre { font-size: .85em; word-break: break-all; white-space: pre-wrap; }
pre { background: #f4f4f4; padding: .6em; }
dl { display: grid; grid-template-columns: max-content 1fr; gap: .3em 1em; }
dt { font-weight: bold; } dd { margin: 0; min-width: 0; }
.status-valid { color: #060; } .status-expired, .status-deprecated { color: #a00; }
.muted { color: #555; }
@media (max-width: 40em) {
  table, tbody, tr, td { display: block; width: 100%; }
  thead { display: none; }
  tr { border: 1px solid #ccc; border-radius: .4em; margin-bottom: .8em; padding: .3em; }
  td { border: 0; padding: .2em .3em; }
  td[data-label]::before { content: attr(data-label) ": "; font-weight: bold; }
  dl { grid-template-columns: 1fr; } dd { margin-bottom: .4em; }
}
"""
STYLE_HASH = base64.b64encode(hashlib.sha256(STYLE.encode()).digest()).decode()
# Nothing loads, runs or frames these pages but their own hashed style and GET form.
CSP = (
    f"default-src 'none'; style-src 'sha256-{STYLE_HASH}'; form-action 'self';"
    " base-uri 'none'; frame-ancestors 'none'"
)
ENTRY_PAGE = "/entries"


def document(title: str, body: str) -> str:
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{escape(title)}</title><style>{STYLE}</style></head><body>"
        f'<h1><a href="/">Kiln marketplace</a></h1>{body}</body></html>'
    )


def error(message: str) -> str:
    """A page saying what is wrong (a bad filter, an unknown entry)."""
    body = f'<p class="error">{escape(message)}</p><p><a href="/">All entries</a></p>'
    return document("Kiln marketplace", body)


def entry_path(entry: Entry) -> str:
    """The entry's page: stable for as long as the endorser's entry exists
    (the identifier is the image's, the endorser picks whose statement)."""
    query = urlencode({"endorser": entry.endorser.email})
    return f"{ENTRY_PAGE}/{entry.identifier}?{query}"


def when(stamp: str) -> str:
    """A time to the minute, the exact value kept in its datetime."""
    return f'<time datetime="{escape(stamp)}">{escape(humane.moment(stamp))}</time>'


def size(count: int) -> str:
    return f'<span class="size" title="{count} bytes">{sizes.size(count)}</span>'


def status(entry_status: str) -> str:
    return f'<span class="status status-{entry_status}">{entry_status}</span>'


def web_url(url: str) -> bool:
    # An entry is only as trusted as its endorser: no javascript: links.
    return urlparse(url).scheme in ("http", "https")
