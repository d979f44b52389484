"""A pytest plugin (tests/conftest.py loads it) that reports the suite's disk use.

CI's free disk varies from run to run, and a full disk fails every test after
it, so the summary says how low free space went and during which test. Free
space is sampled every SAMPLE_SECONDS by a thread, so a test that fills the
disk for a moment and cleans up in its teardown is seen too."""

from __future__ import annotations

import contextlib
import os
import shutil
import threading
from pathlib import Path

import pytest
from support import REPO

GiB = 1 << 30
SAMPLE_SECONDS = 2.0


class DiskWatch:
    """Free space on the filesystems of named paths, lowest point remembered
    with the test that was running then."""

    def __init__(self, paths: dict[str, Path]) -> None:
        self.paths = paths
        self.fs: dict[int, list[str]] = {}  # a filesystem's device: the paths on it
        for name, path in paths.items():
            self.fs.setdefault(os.stat(path).st_dev, []).append(name)
        self.start = {dev: self._free(dev) for dev in self.fs}
        self.low = {dev: (free, "the start") for dev, free in self.start.items()}
        self.running = "the start"  # the test under way, as pytest names it
        self._lock = threading.Lock()  # the watcher and pytest's hooks both sample
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="disk-watch", daemon=True)
        self._thread.start()

    def _free(self, dev: int) -> int:
        path = self.paths[self.fs[dev][0]]
        while not path.exists():  # pytest removes basetemp when every test passed
            path = path.parent
        return shutil.disk_usage(path).free

    def _watch(self) -> None:
        while not self._stop.wait(SAMPLE_SECONDS):
            self.sample()

    def sample(self) -> None:
        with self._lock:
            running = self.running
            for dev in self.fs:
                free = self._free(dev)
                if free < self.low[dev][0]:
                    self.low[dev] = (free, running)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()

    def lines(self) -> list[str]:
        lines = []
        for dev, names in self.fs.items():
            (low, during), start = self.low[dev], self.start[dev]
            lines.append(
                f"the filesystem of {' and '.join(names)}: {start / GiB:.1f} GiB free at the "
                f"start, {self._free(dev) / GiB:.1f} at the end, lowest {low / GiB:.1f} "
                f"(the suite held {(start - low) / GiB:.1f} GiB at most) during {during}"
            )
        for name, path in self.paths.items():
            if path.exists():
                lines.append(f"{name} ({path}) holds {disk_use(path) / GiB:.1f} GiB at the end")
            else:
                lines.append(f"{name} ({path}) is gone: pytest removes it when every test passed")
        return lines


def disk_use(root: Path) -> int:
    """Bytes allocated under root (sparse files count what they hold), not
    counting what is mounted there (a failed build's leftover mounts)."""
    total, dev = 0, os.stat(root).st_dev
    for parent, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if _same_fs(os.path.join(parent, d), dev)]
        for name in files:
            with contextlib.suppress(OSError):  # gone meanwhile
                total += os.lstat(os.path.join(parent, name)).st_blocks * 512
    return total


def _same_fs(path: str, dev: int) -> bool:
    try:
        return os.lstat(path).st_dev == dev
    except OSError:
        return False


_watch: DiskWatch | None = None


def pytest_sessionstart(session: pytest.Session) -> None:
    global _watch
    # Made now rather than at the first tmp_path: so even a run without one makes
    # a numbered basetemp (and pytest prunes the older ones as it always does).
    basetemp = session.config._tmp_path_factory.getbasetemp()  # type: ignore[attr-defined]
    (REPO / ".cache").mkdir(exist_ok=True)
    _watch = DiskWatch({"the repo's .cache": REPO / ".cache", "pytest's basetemp": basetemp})


def pytest_runtest_logstart(nodeid: str) -> None:
    if _watch is not None:
        _watch.running = nodeid


def pytest_runtest_logfinish(nodeid: str) -> None:
    if _watch is not None:
        _watch.sample()  # after its teardown: module fixtures end in the last test's


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _watch is not None:
        _watch.stop()
        terminalreporter.section("disk use")
        for line in _watch.lines():
            terminalreporter.write_line(line)
