"""The base downloader's guards, without a network: redirects only to http(s),
a resumed reply must continue where the file stops, and a cancelled build's
download thread stops before the cancel returns (it must not write the partial
file once the lock is released)."""

from __future__ import annotations

import asyncio
import threading
import time
import urllib.error
import urllib.request
from email.message import Message
from pathlib import Path

import pytest

from kiln_builder.base import download
from kiln_builder.base.download import FetchLimits


@pytest.mark.parametrize("target", ["ftp://example.org/base.img", "file:///etc/shadow"])
def test_a_redirect_to_anything_but_http_is_refused(target: str) -> None:
    handler = download._HttpRedirectsOnly()
    request = urllib.request.Request("http://example.org/base.img")
    with pytest.raises(urllib.error.HTTPError, match="not an http URL"):
        handler.redirect_request(request, None, 302, "Found", Message(), target)


def test_a_redirect_to_https_is_followed() -> None:
    handler = download._HttpRedirectsOnly()
    request = urllib.request.Request("http://example.org/base.img")
    found = handler.redirect_request(
        request, None, 302, "Found", Message(), "https://example.org/b.img"
    )
    assert found is not None and found.full_url == "https://example.org/b.img"


def test_the_opener_has_no_ftp_file_or_data_handler() -> None:
    opener = download.http_opener()
    for url in ("ftp://example.org/x", "file:///etc/hostname", "data:,x"):
        with pytest.raises(urllib.error.URLError, match="unknown url type"):
            opener.open(url, timeout=1)


@pytest.mark.parametrize(
    ("header", "have", "continues"),
    [
        ("bytes 100-199/200", 100, True),
        ("bytes 100-199/*", 100, True),
        ("bytes 0-199/200", 100, False),
        ("bytes 150-199/200", 100, False),
        ("", 100, False),
        ("pages 100-199/200", 100, False),
    ],
)
def test_a_resumed_reply_must_start_where_the_file_stops(
    header: str, have: int, continues: bool
) -> None:
    assert download._continues(header, have) is continues


async def test_a_cancelled_download_stops_its_thread_before_the_cancel_returns(
    tmp_path: Path,
) -> None:
    partial = tmp_path / "base.part"
    ended = threading.Event()

    def endless(url: str, path: Path, limits: FetchLimits, stop: threading.Event) -> int:
        try:
            while not stop.is_set():
                with open(path, "ab") as out:
                    out.write(b"x" * 1024)
                time.sleep(0.01)
            return 0
        finally:
            ended.set()

    task = asyncio.create_task(download._stoppable(endless, "http://x", partial, FetchLimits()))
    await asyncio.sleep(0.2)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert ended.is_set(), "the thread was still writing after the cancel"
    size = partial.stat().st_size
    await asyncio.sleep(0.1)
    assert partial.stat().st_size == size
