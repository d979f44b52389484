"""The builder's clients of the storage service, all under one retry policy.

How long a build waits for an unreachable storage service before its attempt
fails (for a passing reason, so the build is retried later) is a setting of
the builder service; it is applied here once at start, because the layer
cache, base fetches and artifact uploads each open clients deep inside a build.
"""

from __future__ import annotations

from kiln_client import AsyncStorageClient
from kiln_common.retry import RetryPolicy

DEFAULT_RETRY_SECONDS = 30.0


def retry_policy(seconds: float) -> RetryPolicy:
    """Tries for this long in all: the deadline, not a count of tries, ends them."""
    return RetryPolicy(attempts=1_000_000, deadline=seconds)


_policy = retry_policy(DEFAULT_RETRY_SECONDS)


def set_retry_seconds(seconds: float) -> None:
    """Every later storage call is retried for at most this long."""
    global _policy
    _policy = retry_policy(seconds)


def storage_client(address: str) -> AsyncStorageClient:
    return AsyncStorageClient(address, policy=_policy)
