"""The browser tests' Chromium leaves no process behind, whether the test
body fails or its task is cancelled, and nothing in the temp dir. (For a SIGKILLed test run,
die_with_parent kills Chromium's main process: tests/unit/test_proc.py shows
the flag on a plain child; Chromium's own children are not shown here.)"""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path

import pytest
from browser_support import headless_chromium
from support import await_until

pytestmark = pytest.mark.integration


def processes_using(profile: Path) -> list[int]:
    """Live processes started with this profile directory: Chromium's browser,
    zygotes, renderers, utilities (all of them pass --user-data-dir on; its
    children rewrite their command line as one string, hence a substring)."""
    flag = f"--user-data-dir={profile}".encode()
    found = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            cmdline = (proc / "cmdline").read_bytes()
            state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue  # gone meanwhile
        if flag in cmdline and state not in ("Z", "X"):
            found.append(int(proc.name))
    return found


class Failed(Exception):
    pass


async def browse(profile: Path, seen: list[int], then: asyncio.Future[None]) -> None:
    """Opens a page, notes Chromium's processes, then awaits then."""
    async with headless_chromium(profile) as browser:
        page = await browser.new_page()  # a renderer, beside the browser process
        await page.set_content("<p id=x>hello</p>")
        assert await page.inner_text("#x") == "hello"
        seen.extend(processes_using(profile))
        await then


async def test_no_chromium_process_outlives_a_failed_test(tmp_path: Path) -> None:
    seen: list[int] = []
    failing = asyncio.get_running_loop().create_future()
    failing.set_exception(Failed())
    with pytest.raises(Failed):
        await browse(tmp_path / "profile", seen, failing)
    assert len(seen) >= 3  # the browser, a zygote, a renderer at least
    assert processes_using(tmp_path / "profile") == []


async def test_no_chromium_process_outlives_a_cancelled_test(tmp_path: Path) -> None:
    seen: list[int] = []
    never = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(browse(tmp_path / "profile", seen, never))
    await await_until("Chromium's page", lambda: seen or task.done(), 60)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert len(seen) >= 3
    assert processes_using(tmp_path / "profile") == []


async def test_chromium_leaves_nothing_in_the_temp_dir(tmp_path: Path) -> None:
    # Chromium makes its singleton socket's directory in TMPDIR and leaves it
    # behind: in the system's temp dir, one per browser test, run after run.
    def leftovers() -> list[Path]:
        temp = Path(tempfile.gettempdir())
        return sorted([*temp.glob("org.chromium.Chromium.*"), *temp.glob("kiln-chromium-*")])

    before = leftovers()
    done = asyncio.get_running_loop().create_future()
    done.set_result(None)
    await browse(tmp_path / "profile", [], done)
    assert leftovers() == before
