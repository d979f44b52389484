"""The builder's way to the storage service: an address and how long a call to
it is retried. One value, handed to what needs it (the layer cache, base
fetches, artifact uploads), so no module-wide policy is set behind anyone's back.

How long a build waits for an unreachable storage service before its attempt
fails (for a passing reason, so the build is retried later) is a setting of
the builder service (storage_retry_seconds)."""

from __future__ import annotations

from dataclasses import dataclass

from kiln_client import AsyncStorageClient
from kiln_common.retry import RetryPolicy

DEFAULT_RETRY_SECONDS = 30.0


def retry_policy(seconds: float) -> RetryPolicy:
    """Tries for this long in all: the deadline, not a count of tries, ends them."""
    return RetryPolicy(attempts=1_000_000, deadline=seconds)


@dataclass(frozen=True)
class StorageAccess:
    address: str  # host:port
    retry_seconds: float = DEFAULT_RETRY_SECONDS

    def client(self) -> AsyncStorageClient:
        return AsyncStorageClient(self.address, policy=retry_policy(self.retry_seconds))
