"""Bytes between the event loop and the threads openstacksdk blocks in.

An upload runs in a thread (requests reads a body iterator there) while the
bytes come from an async stream on the loop: ToThread hands them over one
chunk at a time, never holding more than a chunk, so nothing is copied whole."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

from kiln_common.errors import Cancelled

CHUNK = 1 << 20  # requests writes each item as it comes: small chunks cost syscalls


class ToThread:
    """A blocking iterator over an async byte stream, for a body that a
    thread sends. abort() makes the next read in the thread raise, so an
    upload whose publication was cancelled stops instead of running on."""

    def __init__(self, stream: AsyncIterator[bytes], loop: asyncio.AbstractEventLoop) -> None:
        self._stream = stream
        self._loop = loop
        self._aborted = threading.Event()
        self._waiting: concurrent.futures.Future[bytes | None] | None = None
        self._reading: asyncio.Task[bytes | None] | None = None  # the read on the loop
        self.sent = 0

    def abort(self) -> None:
        """From the loop: the thread's next read raises, and a read waiting on
        a stalled stream is cancelled (else the thread would wait for ever)."""
        self._aborted.set()
        if self._waiting is not None:
            self._waiting.cancel()

    async def aclose(self) -> None:
        """From the loop, however the upload ended: no further reads, the one
        in flight cancelled and finished, then the stream closed, even when
        the sending thread is still stuck (a stream is never left open)."""
        self.abort()
        reading = self._reading
        if reading is not None and not reading.done():
            reading.cancel()
            await asyncio.wait({reading})
        aclose = getattr(self._stream, "aclose", None)
        if aclose is not None:
            with contextlib.suppress(Exception):
                await aclose()

    async def _read(self) -> bytes | None:
        self._reading = asyncio.current_task()
        try:
            return await anext(self._stream)
        except StopAsyncIteration:
            return None

    def _next(self) -> bytes | None:
        if self._aborted.is_set():
            raise Cancelled("the upload was abandoned")
        self._waiting = asyncio.run_coroutine_threadsafe(self._read(), self._loop)
        if self._aborted.is_set():  # abort() ran between the check and the assignment
            self._waiting.cancel()
        try:
            return self._waiting.result()
        except concurrent.futures.CancelledError:
            raise Cancelled("the upload was abandoned") from None

    def __iter__(self) -> Iterator[bytes]:
        pending = bytearray()
        while (chunk := self._next()) is not None:
            pending += chunk
            if len(pending) >= CHUNK:
                self.sent += len(pending)
                yield bytes(pending)
                pending.clear()
        if pending:
            self.sent += len(pending)
            yield bytes(pending)


Opened = tuple[Iterator[bytes], Callable[[], None]]


async def from_thread(open_: Callable[[], Awaitable[Opened]]) -> AsyncIterator[bytes]:
    """An async stream over a blocking iterator (a download's body), each
    chunk read in a thread. open_ runs at the first read, not before: a
    stream dropped unread opens nothing, so there is nothing to leak; once
    opened, its close() runs however the consumer stops."""
    chunks, close = await open_()
    try:
        while (chunk := await asyncio.to_thread(next, chunks, None)) is not None:
            yield chunk
    finally:
        await asyncio.to_thread(close)
