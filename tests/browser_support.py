"""Debian's headless Chromium for browser tests, driven by Playwright.

Chromium is started through kiln_common.proc.helper (so its whole process
group is stopped on every path: a failed assertion, a cancel, a timeout; if
the test run itself is SIGKILLed, the kernel kills Chromium's main process,
whose children then exit as it goes) with a DevTools port of its own;
Playwright only connects to that port, so no browser is downloaded and
`playwright install` is never needed. (Playwright's own driver, a bundled
node, is started and stopped by async_playwright itself.)"""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from playwright.async_api import Browser, async_playwright
from support import await_until

from kiln_common.proc import ProcessError, helper

CHROMIUM = "chromium"  # Debian's package: /usr/bin/chromium
FLAGS = (
    "--headless",
    "--no-sandbox",  # Chromium refuses to run as root with its sandbox
    "--disable-gpu",
    "--disable-dev-shm-usage",  # a container's /dev/shm may be tiny
    "--no-first-run",
    "--disable-background-networking",  # nothing but the test's own requests
    "--remote-debugging-port=0",  # a free port, written to DevToolsActivePort
)
START_TIMEOUT = 30.0
EXIT_TIMEOUT = 10.0


def processes_in_group(pgid: int) -> list[int]:
    """The live (not zombie) processes whose process group is pgid."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # gone meanwhile
        if fields[0] not in ("Z", "X") and int(fields[2]) == pgid:
            found.append(int(stat.parent.name))
    return found


def _devtools_port(profile: Path, browser: asyncio.subprocess.Process) -> int | None:
    """Chromium's DevTools port once it has written it, None until then."""
    if browser.returncode is not None:
        raise ProcessError([CHROMIUM], browser.returncode, "exited before it listened")
    try:
        first, _, _ = (profile / "DevToolsActivePort").read_text().partition("\n")
    except FileNotFoundError:
        return None
    return int(first) if first.isdigit() else None  # a half-written file: wait


@asynccontextmanager
async def headless_chromium(profile: Path) -> AsyncIterator[Browser]:
    """Chromium with a fresh profile directory, as a Playwright Browser. On
    exit the browser's process group is gone: it fails if any of its
    processes outlive EXIT_TIMEOUT."""
    profile.mkdir(parents=True, exist_ok=True)
    argv = [CHROMIUM, *FLAGS, f"--user-data-dir={profile}", "about:blank"]
    # Chromium makes its singleton socket's directory in TMPDIR and leaves it
    # there, so it gets one of its own. Not inside the profile: a socket's path
    # must fit in 108 bytes, or Chromium aborts.
    with tempfile.TemporaryDirectory(prefix="kiln-chromium-") as scratch:
        async with _chromium(argv, profile, scratch) as port, async_playwright() as playwright:
            connected = await playwright.chromium.connect_over_cdp(f"http://127.0.0.1:{port}")
            try:
                yield connected
            finally:
                await connected.close()


@asynccontextmanager
async def _chromium(argv: list[str], profile: Path, scratch: str) -> AsyncIterator[int]:
    """Chromium's process group, started and awaited until its DevTools port is
    known; on exit, awaited until all of it is gone."""
    pgid = 0
    try:
        async with helper(argv, env={"TMPDIR": scratch}, die_with_parent=True) as browser:
            pgid = browser.pid  # helper starts a new session: pid == process group
            yield await await_until(
                "Chromium's DevTools port", lambda: _devtools_port(profile, browser), START_TIMEOUT
            )
    finally:
        if pgid:
            await await_until(
                "Chromium's processes to exit",
                lambda: not processes_in_group(pgid),
                EXIT_TIMEOUT,
            )
