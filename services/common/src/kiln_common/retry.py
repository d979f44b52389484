"""The one retry policy: which failures are worth another try, how many tries,
exponential backoff with full jitter, and a deadline for all tries together.

Clients of the Kiln services, the builder's NATS calls and the storage
service's S3 calls all retry through this module, never with a loop of their
own. Clock and sleep are injectable so tests run without waiting."""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import TypeVar

from kiln_common.errors import Unavailable

log = logging.getLogger(__name__)

T = TypeVar("T")
Clock = Callable[[], float]


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 5  # tries in all, the first included
    initial: float = 0.2  # seconds before the second try
    maximum: float = 5.0  # no wait is longer than this
    multiplier: float = 2.0
    deadline: float | None = 60.0  # seconds for all tries together; None: no limit
    # Failures worth another try; anything else is raised at once.
    retry_on: tuple[type[BaseException], ...] = (Unavailable,)
    rng: random.Random = field(default_factory=random.Random, compare=False, repr=False)

    def retryable(self, exc: BaseException) -> bool:
        return isinstance(exc, self.retry_on)

    def delays(self) -> Iterator[float]:
        """The wait before each further try: full jitter, so clients that
        failed together do not come back together."""
        ceiling = self.initial
        for _ in range(self.attempts - 1):
            yield self.rng.uniform(ceiling / 2, ceiling)
            ceiling = min(ceiling * self.multiplier, self.maximum)

    def backoff(self, what: str = "call", clock: Clock = time.monotonic) -> Backoff:
        """The state of one retried operation, for loops that cannot be a
        single call (a stream resumed where it broke off)."""
        return Backoff(self, what, clock)

    def call(
        self,
        fn: Callable[[], T],
        what: str = "call",
        *,
        sleep: Callable[[float], None] = time.sleep,
        clock: Clock = time.monotonic,
    ) -> T:
        backoff = self.backoff(what, clock)
        while True:
            try:
                return fn()
            except Exception as exc:  # noqa: BLE001 - next_wait re-raises what is not ours
                sleep(backoff.next_wait(exc))

    async def acall(
        self,
        fn: Callable[[], Awaitable[T]],
        what: str = "call",
        *,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        clock: Clock = time.monotonic,
    ) -> T:
        backoff = self.backoff(what, clock)
        while True:
            try:
                return await fn()
            except Exception as exc:  # noqa: BLE001 - next_wait re-raises what is not ours
                await sleep(backoff.next_wait(exc))


class Backoff:
    def __init__(self, policy: RetryPolicy, what: str, clock: Clock) -> None:
        self.policy = policy
        self.what = what
        self._clock = clock
        self.reset()

    def reset(self) -> None:
        """Progress was made: the next failure starts the count afresh."""
        self._waits = self.policy.delays()
        self._start = self._clock()

    def next_wait(self, exc: BaseException) -> float:
        """The wait before the next try; raises exc when it is not worth one
        or none is left (tries or deadline used up)."""
        if not self.policy.retryable(exc):
            raise exc
        wait = next(self._waits, None)
        deadline = self.policy.deadline
        if wait is None or (deadline is not None and self._clock() - self._start + wait > deadline):
            raise exc
        log.info("%s failed (%s); trying again in %.1fs", self.what, exc, wait)
        return wait

    async def wait(self, exc: BaseException) -> None:
        await asyncio.sleep(self.next_wait(exc))
