"""The one retry policy: what it retries, how long it waits, when it stops."""

from __future__ import annotations

import random

import pytest

from kiln_common.errors import InvalidArgument, Unavailable
from kiln_common.retry import RetryPolicy


class FakeClock:
    """Time that moves only when the code under test sleeps."""

    def __init__(self) -> None:
        self.now = 0.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds

    async def asleep(self, seconds: float) -> None:
        self.sleep(seconds)


def failing(times: int, error: Exception):  # type: ignore[no-untyped-def]
    calls = []

    def call() -> str:
        calls.append(1)
        if len(calls) <= times:
            raise error
        return "done"

    return call, calls


def test_an_unavailable_call_is_tried_again_until_it_succeeds() -> None:
    clock = FakeClock()
    call, calls = failing(3, Unavailable("away"))
    policy = RetryPolicy(attempts=5, rng=random.Random(1))
    assert policy.call(call, sleep=clock.sleep, clock=clock) == "done"
    assert len(calls) == 4
    assert len(clock.slept) == 3


def test_a_failure_that_retrying_cannot_mend_is_raised_at_once() -> None:
    clock = FakeClock()
    call, calls = failing(1, InvalidArgument("bad"))
    with pytest.raises(InvalidArgument):
        RetryPolicy().call(call, sleep=clock.sleep, clock=clock)
    assert len(calls) == 1 and clock.slept == []


def test_the_last_failure_is_raised_when_the_tries_are_used_up() -> None:
    clock = FakeClock()
    call, calls = failing(10, Unavailable("away"))
    with pytest.raises(Unavailable):
        RetryPolicy(attempts=3).call(call, sleep=clock.sleep, clock=clock)
    assert len(calls) == 3


def test_no_try_starts_after_the_deadline() -> None:
    clock = FakeClock()
    call, _ = failing(1000, Unavailable("away"))
    policy = RetryPolicy(attempts=1000, initial=1.0, maximum=4.0, deadline=20.0)
    with pytest.raises(Unavailable):
        policy.call(call, sleep=clock.sleep, clock=clock)
    assert clock.now <= 20.0


def test_waits_grow_with_full_jitter_up_to_the_maximum() -> None:
    policy = RetryPolicy(attempts=8, initial=1.0, maximum=8.0, rng=random.Random(7))
    waits = list(policy.delays())
    assert len(waits) == 7
    ceilings = [1, 2, 4, 8, 8, 8, 8]
    assert all(c / 2 <= w <= c for w, c in zip(waits, ceilings, strict=True))


async def test_the_async_call_retries_the_same_way() -> None:
    clock = FakeClock()
    attempts = []

    async def call() -> int:
        attempts.append(1)
        if len(attempts) < 3:
            raise Unavailable("away")
        return 42

    assert await RetryPolicy().acall(call, sleep=clock.asleep, clock=clock) == 42
    assert len(clock.slept) == 2


def test_progress_resets_the_backoff_of_a_resumed_stream() -> None:
    clock = FakeClock()
    backoff = RetryPolicy(attempts=2, deadline=None).backoff("watch", clock)
    backoff.next_wait(Unavailable("1"))
    with pytest.raises(Unavailable):
        backoff.next_wait(Unavailable("2"))  # both tries used
    backoff.reset()  # an update arrived
    assert backoff.next_wait(Unavailable("3")) > 0
