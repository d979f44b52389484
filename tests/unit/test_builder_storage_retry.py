"""The builder's storage retry setting bounds the tries by time alone: a count
of tries must not end them sooner, nor let them run longer."""

from __future__ import annotations

import pytest

from kiln_builder.storage import retry_policy
from kiln_common.errors import Unavailable


@pytest.mark.parametrize("seconds", [3.0, 30.0, 300.0])
def test_storage_calls_are_retried_for_the_configured_time(seconds: float) -> None:
    now = [0.0]
    backoff = retry_policy(seconds).backoff("push", clock=lambda: now[0])
    with pytest.raises(Unavailable):
        while True:
            now[0] += backoff.next_wait(Unavailable("storage away"))
    # The next wait would have passed the deadline; the last is at most 5 s.
    assert seconds - 5.0 <= now[0] <= seconds
