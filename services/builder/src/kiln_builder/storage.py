"""The builder's clients of the storage service, all under one retry policy.

How long a build waits for an unreachable storage service before its attempt
fails (for a passing reason, so the build is retried later) is a setting of
the builder service; it is applied here once at start, because the layer
cache, base fetches and artifact uploads each open clients deep inside a build.
"""

from __future__ import annotations

import dataclasses

from kiln_client import AsyncStorageClient
from kiln_common.retry import RetryPolicy

_policy = RetryPolicy(attempts=10)  # the client library's default: about half a minute


def set_retry_seconds(seconds: float) -> None:
    """Every later storage call is retried for at most this long."""
    global _policy
    _policy = dataclasses.replace(_policy, deadline=seconds)


def storage_client(address: str) -> AsyncStorageClient:
    return AsyncStorageClient(address, policy=_policy)
