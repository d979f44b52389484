"""Which publish targets each tenant may use: its Glance clouds (and so the
Glance projects their clouds.yaml entries log in to) and its marketplace
endorsers. Configuration (the publisher setting `tenants`), read here only.
A Glance base (FetchBase) is served only from a cloud the caller's tenant
may publish to: another cloud's images are not there for it."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from kiln_common.auth.identity import ANY_TENANT, per_tenant
from kiln_common.errors import PermissionDenied

ANY = ANY_TENANT  # also "every cloud", "every endorser" in an entry


class TenantTargets(BaseModel):
    model_config = ConfigDict(extra="forbid")

    clouds: list[str] = Field(default_factory=list)
    """Glance clouds (names in clouds.yaml) the tenant publishes to; "*": all; none unless named."""
    endorsers: list[str] = Field(default_factory=list)
    """Endorsers (e-mails) the tenant's entries are signed by; "*": all; none unless named."""

    def cloud(self, name: str) -> bool:
        return ANY in self.clouds or name in self.clouds

    def endorser(self, email: str) -> bool:
        return ANY in self.endorsers or email.lower() in (e.lower() for e in self.endorsers)


NOTHING = TenantTargets()
EVERY = TenantTargets(clouds=[ANY], endorsers=[ANY])


class TenantPolicy:
    """The targets of each tenant: its own entry, else the "*" entry, else
    none. The tenant "" (identities off) may use every target."""

    def __init__(self, tenants: dict[str, TenantTargets]) -> None:
        self.tenants = tenants

    def of(self, tenant: str) -> TenantTargets:
        return per_tenant(self.tenants, tenant, untenanted=EVERY, unnamed=NOTHING)

    def check(self, tenant: str, clouds: list[str], endorser: str | None) -> None:
        """PermissionDenied naming the first target the tenant may not use."""
        allowed = self.of(tenant)
        for cloud in clouds:
            if not allowed.cloud(cloud):
                raise PermissionDenied(f"tenant {tenant} may not publish to cloud {cloud!r}")
        if endorser is not None and not allowed.endorser(endorser):
            raise PermissionDenied(f"tenant {tenant} may not sign as endorser {endorser!r}")
