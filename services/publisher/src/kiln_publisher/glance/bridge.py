"""Bytes between the event loop and the threads openstacksdk blocks in.

An upload runs in a thread (requests reads a body iterator there) while the
bytes come from an async stream on the loop: ToThread hands them over one
chunk at a time, never holding more than a chunk, so nothing is copied whole."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import AsyncIterator, Callable, Iterator

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
        self.sent = 0

    def abort(self) -> None:
        """From the loop: the thread's next read raises, and a read waiting on
        a stalled stream is cancelled (else the thread would wait for ever)."""
        self._aborted.set()
        if self._waiting is not None:
            self._waiting.cancel()

    def _next(self) -> bytes | None:
        if self._aborted.is_set():
            raise Cancelled("the upload was abandoned")
        self._waiting = asyncio.run_coroutine_threadsafe(_anext_or_none(self._stream), self._loop)
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


async def _anext_or_none(stream: AsyncIterator[bytes]) -> bytes | None:
    try:
        return await anext(stream)
    except StopAsyncIteration:
        return None


async def from_thread(chunks: Iterator[bytes], close: Callable[[], None]) -> AsyncIterator[bytes]:
    """An async stream over a blocking iterator (a download's body), each
    chunk read in a thread; close() runs however the consumer stops."""
    try:
        while (chunk := await asyncio.to_thread(next, chunks, None)) is not None:
            yield chunk
    finally:
        await asyncio.to_thread(close)
