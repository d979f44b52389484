"""Which publish targets a tenant may use: the publisher's `tenants` setting."""

from __future__ import annotations

import pytest

from kiln_common.errors import PermissionDenied
from kiln_publisher.settings import PublisherSettings
from kiln_publisher.tenants import TenantPolicy, TenantTargets


def test_a_named_tenant_gets_its_entry_others_the_star_entry_and_without_one_nothing() -> None:
    policy = TenantPolicy(
        {"web": TenantTargets(clouds=["prod"], endorsers=["Web@example.org"]),
         "*": TenantTargets(clouds=["dev"])}
    )  # fmt: skip
    policy.check("web", ["prod"], "web@example.org")  # e-mails compare case-blind
    policy.check("data", ["dev"], None)
    with pytest.raises(PermissionDenied, match="cloud 'dev'"):
        policy.check("web", ["dev"], None)
    with pytest.raises(PermissionDenied, match="endorser"):
        policy.check("data", [], "web@example.org")
    strict = TenantPolicy({"web": TenantTargets(clouds=["prod"])})
    with pytest.raises(PermissionDenied):
        strict.check("data", ["prod"], None)
    assert not strict.of("data").cloud("prod")


def test_identities_off_may_use_every_target_and_the_default_setting_lets_every_tenant() -> None:
    TenantPolicy({}).check("", ["any"], "any@example.org")
    TenantPolicy(PublisherSettings().tenants).check("team", ["any"], "any@example.org")
    assert TenantTargets().clouds == []  # a tenant named with nothing gets nothing
