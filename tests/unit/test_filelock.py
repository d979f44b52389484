"""The one file lock: tried once, or waited for without blocking the loop."""

from __future__ import annotations

import asyncio
from pathlib import Path

from kiln_common.filelock import file_lock, try_lock


def test_a_held_lock_is_refused_until_its_holder_lets_go(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "x.lock"
    first = try_lock(path)
    assert first is not None
    assert try_lock(path) is None  # flock is per open file: a second open is refused
    first.close()
    again = try_lock(path)
    assert again is not None
    again.close()


def test_a_waiter_gets_the_lock_when_it_is_released_and_can_be_cancelled(tmp_path: Path) -> None:
    path = tmp_path / "x.lock"

    async def scenario() -> list[str]:
        said: list[str] = []
        holder = try_lock(path)
        assert holder is not None

        async def wait() -> None:
            async with file_lock(path, poll=0.01):
                said.append("got it")

        waiter = asyncio.create_task(wait())
        await asyncio.sleep(0.1)
        said.append("still held")
        holder.close()
        await asyncio.wait_for(waiter, 5)

        held = try_lock(path)
        assert held is not None
        cancelled = asyncio.create_task(wait())
        await asyncio.sleep(0.05)
        cancelled.cancel()
        await asyncio.gather(cancelled, return_exceptions=True)
        held.close()
        return said

    assert asyncio.run(scenario()) == ["still held", "got it"]
