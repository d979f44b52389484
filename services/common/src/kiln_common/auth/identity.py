"""A caller as Kiln sees it, and what each role may do.

| role      | may                                    |
| viewer    | read                                   |
| builder   | read, submit and cancel builds         |
| publisher | read, publish and deprecate            |
| admin     | all of the above, manage tokens        |

A service's own identity (the builder writing layers and build outputs) is
the role `service`: it may write what only Kiln's services write."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


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
    PUBLISH = "publish"  # publish, deprecate, fetch a base
    ADMIN = "admin"  # tokens, quotas


_MAY: dict[Role, frozenset[Verb]] = {
    Role.VIEWER: frozenset({Verb.READ}),
    Role.BUILDER: frozenset({Verb.READ, Verb.WRITE, Verb.BUILD}),
    Role.PUBLISHER: frozenset({Verb.READ, Verb.WRITE, Verb.PUBLISH}),
    Role.ADMIN: frozenset(Verb),
    Role.SERVICE: frozenset({Verb.READ, Verb.WRITE, Verb.BUILD, Verb.PUBLISH}),
}


@dataclass(frozen=True)
class Identity:
    subject: str  # a token's id, or a JWT's sub
    tenant: str
    role: Role
    via: str  # static | oidc

    def __str__(self) -> str:
        return f"{self.subject} ({self.role} of {self.tenant}, {self.via})"


def allowed(identity: Identity, verb: Verb) -> bool:
    return verb in _MAY[identity.role]
