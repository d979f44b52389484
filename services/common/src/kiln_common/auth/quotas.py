"""What each tenant may hold at once: concurrent builds, queued builds and
stored bytes. One table for every service (the `quotas` setting they share:
the builder counts builds, storage bytes); a tenant not named gets the "*"
entry, else no limit. Over a limit is RESOURCE_EXHAUSTED, naming the limit,
and nothing is done."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from kiln_common.auth.identity import per_tenant
from kiln_common.errors import ResourceExhausted


class Quota(BaseModel):
    model_config = ConfigDict(extra="forbid")

    concurrent_builds: int | None = Field(default=None, ge=1)
    """Builds of the tenant running at once (across every builder); none: no limit."""
    queued_builds: int | None = Field(default=None, ge=0)
    """Builds of the tenant waiting for a builder; none: no limit."""
    stored_bytes: int | None = Field(default=None, ge=0)
    """Bytes of the tenant's artifacts in storage (each counted whole, shared
    or not); none: no limit."""


UNLIMITED = Quota()


class Quotas:
    def __init__(self, table: dict[str, Quota]) -> None:
        self.table = table

    def of(self, tenant: str) -> Quota:
        """The tenant's limits; the tenant "" (identities off) has none."""
        return per_tenant(self.table, tenant, untenanted=UNLIMITED, unnamed=UNLIMITED)


def check(tenant: str, what: str, having: int, adding: int, limit: int | None) -> None:
    """ResourceExhausted if having + adding goes over the limit (None: none)."""
    if limit is not None and having + adding > limit:
        raise ResourceExhausted(
            f"tenant {tenant} is over its quota of {what}: {limit} (it has {having}"
            f"{f', and this adds {adding}' if adding != 1 else ''}); wait for some to end,"
            " or ask an admin for more"
        )
