"""Every RPC of every Kiln API has its line in the one policy table (a method
missing from it is refused to everyone), and each role's verbs are the
documented ones."""

from __future__ import annotations

from kiln_api.auth.v1 import auth_pb2
from kiln_api.builder.v1 import builder_pb2
from kiln_api.publisher.v1 import publisher_pb2
from kiln_api.storage.v1 import storage_pb2
from kiln_common.auth import Identity, Role, Verb, allowed
from kiln_common.auth.policy import METHODS, OPEN, required


def test_every_rpc_of_every_api_is_in_the_policy_table() -> None:
    served = {
        f"/{service.full_name}/{method.name}"
        for module in (auth_pb2, builder_pb2, publisher_pb2, storage_pb2)
        for service in module.DESCRIPTOR.services_by_name.values()
        for method in service.methods
    }
    assert served - set(METHODS) == set()
    assert {m for m in METHODS if m not in served and METHODS[m] != OPEN} == set()
    assert required("/kiln.storage.v1.Storage/Unknown") is None


def test_each_role_has_its_verbs() -> None:
    def verbs(role: Role) -> set[Verb]:
        return {v for v in Verb if allowed(Identity("s", "t", role, "static"), v)}

    assert verbs(Role.VIEWER) == {Verb.READ}
    assert verbs(Role.BUILDER) == {Verb.READ, Verb.WRITE, Verb.BUILD}
    assert verbs(Role.PUBLISHER) == {Verb.READ, Verb.WRITE, Verb.BUILD, Verb.PUBLISH}
    assert verbs(Role.ADMIN) == set(Verb)
    assert Verb.ADMIN not in verbs(Role.SERVICE)
    deleting = {role for role in Role if Verb.DELETE in verbs(role)}
    assert deleting == {Role.ADMIN, Role.SERVICE}
