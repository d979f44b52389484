"""The bytes on their way through storage: whole-file digests fed part by part
as an upload's parts arrive, a stream regrouped into parts, and reads from the
backend kept ahead of the network."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterable, AsyncIterator

from kiln_storage.model import Checksums, Hashers


class PartDigest:
    """Whole-file digests computed as parts arrive.

    Parts may arrive a little out of order (a client sends several at once):
    up to HOLD_PARTS early ones wait in memory for their predecessors. A part
    re-sent, too far ahead, or sent to another replica makes it give up;
    completion then reads the object back once to hash it."""

    HOLD_PARTS = 8

    def __init__(self) -> None:
        self._hashers = Hashers()
        self._next = 1
        self._held: dict[int, bytes] = {}
        self._valid = True
        self._tail: asyncio.Future[None] | None = None

    def feed(self, number: int, data: bytes) -> None:
        if not self._valid:
            return
        if (
            number < self._next
            or number in self._held
            or (number > self._next and len(self._held) >= self.HOLD_PARTS)
        ):
            self._valid = False
            self._held.clear()
            return
        self._held[number] = data
        while self._next in self._held:
            self._chain(self._held.pop(self._next))
            self._next += 1

    def _chain(self, data: bytes) -> None:
        previous = self._tail

        async def step() -> None:
            if previous is not None:
                await previous
            # hashlib releases the GIL on large buffers: the four run in parallel.
            await asyncio.gather(
                *(asyncio.to_thread(h.update, data) for h in self._hashers.by_alg.values())
            )

        self._tail = asyncio.ensure_future(step())

    async def result(self, count: int) -> Checksums | None:
        if not self._valid or self._next != count + 1 or self._held:
            return None
        if self._tail is not None:
            await self._tail
        return self._hashers.result()

    def cancel(self) -> None:
        self._held.clear()
        if self._tail is not None:
            self._tail.cancel()


async def rechunk(chunks: AsyncIterable[bytes], size: int) -> AsyncIterator[bytes]:
    """Regroups a stream of chunks into pieces of exactly size bytes (the last
    shorter), copying each byte once."""
    held: list[memoryview] = []
    have = 0
    async for chunk in chunks:
        view = memoryview(chunk)
        while view:
            take = min(len(view), size - have)
            held.append(view[:take])
            have += take
            view = view[take:]
            if have == size:
                yield b"".join(held)
                held, have = [], 0
    if have:
        yield b"".join(held)


async def read_ahead(chunks: AsyncIterator[bytes], depth: int = 4) -> AsyncIterator[bytes]:
    """Keeps reading from the backend while the caller sends what it has, so
    storage reads and network writes overlap instead of taking turns."""
    queue: asyncio.Queue[bytes | BaseException | None] = asyncio.Queue(depth)

    async def pump() -> None:
        try:
            async for chunk in chunks:
                await queue.put(chunk)
            await queue.put(None)
        except Exception as exc:  # noqa: BLE001 - handed to the consumer below
            await queue.put(exc)

    task = asyncio.create_task(pump())
    try:
        while (item := await queue.get()) is not None:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def empty() -> AsyncIterator[bytes]:
    return
    yield  # pragma: no cover - makes this an async generator
