"""The one file lock: an exclusive flock on a lock file, tried once (an outbox's
directory is owned by whoever holds it) or waited for without blocking the event
loop (one builder of a node makes a shared thing, the others wait).

flock, not a lock-file's existence: the kernel drops it when its holder dies, so
a killed process never leaves a lock behind for a janitor."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import IO


def try_lock(path: Path) -> IO[str] | None:
    """The open lock file, locked, or None if another holds it. Closing the
    handle releases the lock."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = open(path, "a")  # noqa: SIM115 - held for as long as the caller owns what it locks
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        return None
    return handle


@contextlib.asynccontextmanager
async def file_lock(path: Path, poll: float = 0.5) -> AsyncIterator[None]:
    """Hold the lock on path, polling for it (so a cancelled waiter gives up at
    once, where a blocking flock in a thread would hold the thread)."""
    while True:
        handle = try_lock(path)
        if handle is not None:
            break
        await asyncio.sleep(poll)  # another process holds it: no event to wait on
    with handle:
        yield
