"""A durable outbox for events: an event whose publish fails is written here
and sent when NATS is back, in the order the events happened, once (each
carries its event id as Nats-Msg-Id, which the stream deduplicates).

One directory per publishing process, locked with flock while it lives. A
publisher that starts adopts the outboxes whose owner died (their lock is
free), so a builder killed while NATS was away loses none of its events."""

from __future__ import annotations

import contextlib
import os
import re
import time
from collections import deque
from pathlib import Path
from typing import IO

from kiln_common.filelock import try_lock

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")
LOCK = ".lock"


class Outbox:
    """Pending events as (event id, subject, body), oldest first. Without a
    directory they are kept in memory: still ordered and retried, but lost
    with the process."""

    def __init__(self, root: Path | None, owner: str) -> None:
        self._memory: deque[tuple[str, str, bytes]] = deque()
        self._dir: Path | None = None
        self._lock: IO[str] | None = None
        if root is not None:
            self._dir, self._lock = _claim(root, _UNSAFE.sub("_", owner))
            self._adopt(root)

    def _adopt(self, root: Path) -> None:
        assert self._dir is not None
        for other in sorted(p for p in root.iterdir() if p.is_dir() and p != self._dir):
            lock = try_lock(other / LOCK)
            if lock is None:
                continue  # its owner is alive
            try:
                for entry in other.glob("*.event"):
                    entry.rename(self._dir / entry.name)  # names sort by time
                (other / LOCK).unlink(missing_ok=True)
                with contextlib.suppress(OSError):
                    other.rmdir()
            finally:
                lock.close()

    def __len__(self) -> int:
        return len(self._memory) if self._dir is None else len(self._files())

    def _files(self) -> list[Path]:
        assert self._dir is not None
        return sorted(self._dir.glob("*.event"))

    def add(self, event_id: str, subject: str, body: bytes) -> None:
        if self._dir is None:
            self._memory.append((event_id, subject, body))
            return
        name = f"{time.time_ns():020d}-{event_id}.event"
        staged = self._dir / f".{name}.tmp"
        with open(staged, "wb") as f:
            f.write(subject.encode() + b"\n" + body)
            f.flush()
            os.fsync(f.fileno())
        staged.rename(self._dir / name)  # whole or absent, never half

    def oldest(self) -> tuple[str, str, bytes] | None:
        if self._dir is None:
            return self._memory[0] if self._memory else None
        files = self._files()
        if not files:
            return None
        subject, _, body = files[0].read_bytes().partition(b"\n")
        event_id = files[0].name.removesuffix(".event").split("-", 1)[1]
        return event_id, subject.decode(), body

    def sent(self, event_id: str) -> None:
        """Removes the oldest event, which was just sent."""
        if self._dir is None:
            if self._memory and self._memory[0][0] == event_id:
                self._memory.popleft()
            return
        for path in self._dir.glob(f"*-{event_id}.event"):
            path.unlink(missing_ok=True)

    def close(self) -> None:
        if self._lock is not None:
            self._lock.close()
            self._lock = None


def _claim(root: Path, name: str) -> tuple[Path, IO[str]]:
    """The directory name, or name.1, name.2 … if a live publisher (another
    in this process, say) holds it: each publisher owns one."""
    for n in range(1000):
        directory = root / (name if n == 0 else f"{name}.{n}")
        directory.mkdir(parents=True, exist_ok=True)
        lock = try_lock(directory / LOCK)
        if lock is not None:
            return directory, lock
    raise RuntimeError(f"no free outbox for {name} under {root}")
