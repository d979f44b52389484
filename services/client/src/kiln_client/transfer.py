"""The file side of a transfer: an upload's plan of parts read from the file,
and a download's sink that writes and hashes what arrives, overlapped."""

from __future__ import annotations

import hashlib
import urllib.error
import urllib.request
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol
from urllib.parse import urlsplit

from kiln_client.errors import ClientError
from kiln_common.errors import Unavailable
from kiln_common.grpc_server import CHUNK_SIZE
from kiln_common.retry import RetryPolicy

Progress = Callable[[int], None]


class StopFlag(Protocol):
    """threading.Event or asyncio.Event: set means stop and abort."""

    def is_set(self) -> bool: ...


def state_file(state_dir: Path | None, path: Path, size: int) -> Path | None:
    """Where a push of path keeps its upload id, so a push run again resumes:
    named for the file, its size and its mtime (a changed file starts over)."""
    if state_dir is None:
        return None
    st = path.stat()
    ident = f"{path.resolve()}\0{size}\0{st.st_mtime_ns}".encode()
    return state_dir / f"upload-{hashlib.sha256(ident).hexdigest()[:32]}.json"


@dataclass(frozen=True)
class UploadPlan:
    path: Path
    size: int
    part_size: int

    @property
    def count(self) -> int:
        return max(1, -(-self.size // self.part_size))

    def part(self, number: int) -> tuple[int, int]:
        offset = (number - 1) * self.part_size
        return offset, min(self.part_size, self.size - offset)


def read_part(path: Path, offset: int, length: int) -> bytes:
    with open(path, "rb") as f:
        f.seek(offset)
        return f.read(length)


class Counter:
    """Bytes received so far, reported to the progress callback."""

    def __init__(self, have: int, progress: Progress | None) -> None:
        self.have = have
        self._progress = progress

    def add(self, n: int) -> None:
        self.have += n
        if self._progress:
            self._progress(n)


class Sink:
    """Appends chunks to a file and hashes them on two worker threads, so
    receiving, writing and hashing overlap (each releases the GIL)."""

    IN_FLIGHT = 8

    def __init__(self, path: Path, hash_existing: bool) -> None:
        self._file = open(path, "ab")  # noqa: SIM115 - closed in __exit__
        self._digest = hashlib.sha256()
        self._writer = ThreadPoolExecutor(1)
        self._hasher = ThreadPoolExecutor(1)
        self._pending: list[Future[object]] = []
        if hash_existing:
            with open(path, "rb") as old:
                for block in iter(lambda: old.read(CHUNK_SIZE), b""):
                    self._digest.update(block)

    def add(self, data: bytes) -> None:
        self._pending.append(self._writer.submit(self._file.write, data))
        self._pending.append(self._hasher.submit(self._digest.update, data))
        if len(self._pending) > 2 * self.IN_FLIGHT:
            for fut in self._pending[:2]:
                fut.result()
            del self._pending[:2]

    def finish(self) -> str:
        for fut in self._pending:
            fut.result()
        self._pending.clear()
        self._file.flush()
        return self._digest.hexdigest()

    def __enter__(self) -> Sink:
        return self

    def __exit__(self, *exc: object) -> None:
        # Whatever happened, what was received is on disk for the next resume.
        for fut in self._pending:
            fut.exception()
        self._writer.shutdown()
        self._hasher.shutdown()
        self._file.close()


def fetch_url(url: str, sink: Sink, counted: Counter, policy: RetryPolicy) -> None:
    """The bytes from counted.have on, by a Range request on the download URL
    (they do not pass through the service); a broken connection is retried."""

    def once() -> None:
        start = counted.have
        headers = {"Range": f"bytes={start}-"} if start else {}
        try:
            request = urllib.request.Request(url, headers=headers)
            with urllib.request.urlopen(request, timeout=60) as response:
                if start and response.status != 206:
                    raise ClientError(f"{urlsplit(url).netloc} ignored the Range request")
                while block := response.read(CHUNK_SIZE):
                    sink.add(block)
                    counted.add(len(block))
        except urllib.error.HTTPError:
            raise  # refused (expired, forbidden): retrying will not help
        except OSError as exc:
            raise Unavailable(f"download from {urlsplit(url).netloc} broke: {exc}") from exc

    policy.call(once, "download")
