"""A caller as Kiln sees it, and what each role may do.

| role      | may                                                      |
| viewer    | read                                                     |
| builder   | read, store artifacts, submit and cancel builds, bases   |
| publisher | what a builder may, publish and deprecate                |
| admin     | all of it, delete artifacts, manage tokens               |

A service's own identity (the builder writing layers and build outputs) is
the role `service`: it may write what only Kiln's services write."""

from __future__ import annotations

import contextvars
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from enum import StrEnum
from typing import TypeVar

from kiln_common.errors import PermissionDenied

T = TypeVar("T")


class Role(StrEnum):
    VIEWER = "viewer"
    BUILDER = "builder"
    PUBLISHER = "publisher"
    ADMIN = "admin"
    SERVICE = "service"


class Verb(StrEnum):
    READ = "read"
    WRITE = "write"  # store artifacts
    BUILD = "build"  # submit and cancel
    PUBLISH = "publish"  # publish, deprecate
    DELETE = "delete"  # delete artifacts (a build's outputs, layers)
    ADMIN = "admin"  # tokens, quotas


_MAY: dict[Role, frozenset[Verb]] = {
    Role.VIEWER: frozenset({Verb.READ}),
    Role.BUILDER: frozenset({Verb.READ, Verb.WRITE, Verb.BUILD}),
    # A publisher builds too: a recipe's publish: section is published when
    # its build succeeds, so submitting one is publishing.
    Role.PUBLISHER: frozenset({Verb.READ, Verb.WRITE, Verb.BUILD, Verb.PUBLISH}),
    Role.ADMIN: frozenset(Verb),
    Role.SERVICE: frozenset({Verb.READ, Verb.WRITE, Verb.BUILD, Verb.PUBLISH, Verb.DELETE}),
}


@dataclass(frozen=True)
class Identity:
    subject: str  # a token's id, or a JWT's sub
    tenant: str
    role: Role
    via: str  # static | oidc
    # A service's call made for one tenant's work (a build's layers and
    # outputs, a publication's artifact): seen and checked as that tenant's.
    acting_for: str = ""

    def __str__(self) -> str:
        acting = f", for {self.acting_for}" if self.acting_for else ""
        return f"{self.subject} ({self.role} of {self.tenant}{acting}, {self.via})"


def allowed(identity: Identity, verb: Verb) -> bool:
    return verb in _MAY[identity.role]


# The identity of the call being served, set by the interceptor around the
# servicer (None where identities are off): cores read it, never grpc.
_CALLER: contextvars.ContextVar[Identity | None] = contextvars.ContextVar(
    "kiln_caller", default=None
)


def caller() -> Identity | None:
    return _CALLER.get()


@contextmanager
def acting_as(identity: Identity) -> Iterator[None]:
    token = _CALLER.set(identity)
    try:
        yield
    finally:
        _CALLER.reset(token)


# ---- tenants ------------------------------------------------------------------
# Every build, artifact, publication and entry has a tenant. A caller sees and
# acts on its tenant's only; another tenant's object is answered exactly as an
# unknown id is (NOT_FOUND), so ids do not leak. Records made while identities
# were off have no tenant ("") and are seen only where no tenant is in scope.


# The metadata a service's call names the tenant it acts for with.
ACTING_FOR_HEADER = "kiln-acting-for"


def scope() -> str | None:
    """The one tenant the call acts in, or None for every tenant: identities
    off, or Kiln's own service identity not acting for a tenant."""
    who = caller()
    if who is None:
        return None
    if who.role is Role.SERVICE:
        return who.acting_for or None
    return who.tenant


def visible(tenant: str) -> bool:
    """Whether an object of this tenant exists for the caller."""
    wanted = scope()
    return wanted is None or tenant == wanted


ANY_TENANT = "*"  # in a per-tenant setting: every tenant not named


def per_tenant(table: Mapping[str, T], tenant: str, *, untenanted: T, unnamed: T) -> T:
    """A tenant's entry of a per-tenant setting (quotas, publish targets): its
    own, else the "*" entry, else unnamed; untenanted for "" (identities off)."""
    if not tenant:
        return untenanted
    if tenant in table:
        return table[tenant]
    return table.get(ANY_TENANT, unnamed)


def owner() -> str:
    """The tenant a new object belongs to ("" with identities off)."""
    return scope() or ""


# Labels only Kiln's builder writes (its outputs, their attempt and build,
# its cache layers): a tenant's artifact must not pass for one of those.
RESERVED_PREFIX = "kiln-"
RESERVED_LABELS = frozenset({"build-id"})


def check_labels_writable(labels: Mapping[str, str]) -> None:
    """PermissionDenied if the caller (not Kiln's service identity) sets a
    label only the builder writes; anyone may where identities are off."""
    who = caller()
    if who is None or who.role is Role.SERVICE:
        return
    reserved = sorted(k for k in labels if k.startswith(RESERVED_PREFIX) or k in RESERVED_LABELS)
    if reserved:
        raise PermissionDenied(
            f"labels {', '.join(reserved)}: only Kiln's builder writes them (a build's"
            " outputs and cache layers)"
        )
