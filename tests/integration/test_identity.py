"""Who may call: a storage service with `auth: required`, its static tokens in
a real nats-server and a real OIDC issuer on the loopback. Every bad token is
UNAUTHENTICATED and every call a role may not make PERMISSION_DENIED, with
nothing done; the good ones pass, and the caller's identity is what its token
says."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import Any

import grpc
import nats
import pytest
from oidc_support import Issuer, new_key, oidc_issuer
from support import Authed, bearer

from kiln_api.auth.v1 import auth_pb2 as apb
from kiln_api.auth.v1 import auth_pb2_grpc as apb_grpc
from kiln_api.storage.v1 import storage_pb2 as pb
from kiln_api.storage.v1 import storage_pb2_grpc as pb_grpc
from kiln_client import AsyncStorageClient
from kiln_common.auth import Role
from kiln_common.auth.static import StaticTokens
from kiln_common.grpc_server import CHANNEL_OPTIONS
from kiln_devstack.devservers import Nats

pytestmark = pytest.mark.integration
UNAUTHENTICATED = grpc.StatusCode.UNAUTHENTICATED
DENIED = grpc.StatusCode.PERMISSION_DENIED


@asynccontextmanager
async def issued(nats_url: str) -> AsyncIterator[StaticTokens]:
    """Tokens made straight in the bucket, as `kiln up` makes its admin's."""
    nc = await nats.connect(nats_url)
    try:
        yield StaticTokens(nc.jetstream())
    finally:
        await nc.close()


@asynccontextmanager
async def guarded(storage_service: Any, nats_server: Nats, issuer: Issuer) -> AsyncIterator[str]:
    settings = dict(
        auth="required", nats_url=nats_server.url, oidc_issuer=issuer.url,
        oidc_refetch_seconds=0.5,
    )  # fmt: skip
    async with storage_service(**settings) as (_, address):
        yield address


@asynccontextmanager
async def stubs(address: str, token: str | None) -> AsyncIterator[tuple[Any, Any]]:
    async with grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS) as channel:
        yield (
            Authed(pb_grpc.StorageStub(channel), bearer(token)),
            Authed(apb_grpc.TokensStub(channel), bearer(token)),
        )


async def code_of(call: Any) -> grpc.StatusCode:
    try:
        await call
    except grpc.aio.AioRpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


async def upload(storage: Any, labels: dict[str, str] | None = None) -> Any:
    async def requests() -> AsyncIterator[pb.UploadRequest]:
        yield pb.UploadRequest(header=pb.UploadHeader(labels=labels or {"name": "x"}))
        yield pb.UploadRequest(chunk=b"bytes")

    return storage.Upload(requests())


async def test_bad_tokens_are_unauthenticated_and_do_nothing(
    storage_service: Any, nats_server: Nats
) -> None:
    async with oidc_issuer() as issuer, issued(nats_server.url) as tokens:
        admin, _ = await tokens.issue("ops", Role.ADMIN)
        short, _ = await tokens.issue("team-a", Role.BUILDER, timedelta(seconds=1))
        revoked, record = await tokens.issue("team-a", Role.BUILDER)
        await tokens.revoke(record.id)
        forger = new_key("k1")  # the issuer's kid, another key
        now = int(time.time())
        bad = {
            "none": None,
            "not a bearer": "",
            "garbage": "x.y.z",
            "an unknown static token": "kiln_" + "0" * 26 + "_" + "A" * 43,
            "a static token's secret changed": admin[:-4] + "AAAA",
            "an expired static token": short,
            "a revoked static token": revoked,
            "an expired JWT": issuer.token(exp=now - 120),
            "a JWT not yet valid": issuer.token(nbf=now + 600),
            "a JWT wrongly signed": issuer.token(key=forger),
            "a JWT of another issuer": issuer.token(iss="http://127.0.0.1:1"),
            "a JWT for another audience": issuer.token(aud="not-kiln"),
            "a JWT without a tenant": issuer.token(kiln_tenant=None),
            "a JWT with no Kiln role": issuer.token(kiln_role="root"),
            "a JWT claiming the service role": issuer.token(kiln_role="service"),
            "a JWT without exp": issuer.token(exp=None),
        }
        await asyncio.sleep(1.1)  # the short-lived token expires
        async with guarded(storage_service, nats_server, issuer) as address:
            refused = {}
            for what, token in bad.items():
                async with stubs(address, token) as (storage, _):
                    refused[what] = (
                        await code_of(storage.ListArtifacts(pb.ListArtifactsRequest())),
                        await code_of(await upload(storage)),
                    )
            async with stubs(address, admin) as (storage, tokens_api):
                listed = await storage.ListArtifacts(pb.ListArtifactsRequest())
                who = await tokens_api.WhoAmI(apb.WhoAmIRequest())
    assert refused == {what: (UNAUTHENTICATED, UNAUTHENTICATED) for what in bad}
    assert list(listed.artifacts) == []  # no refused upload stored anything
    assert (who.tenant, who.role, who.via) == ("ops", "admin", "static")


async def test_a_jwt_signed_by_a_rotated_key_is_accepted_once_the_keys_are_fetched_again(
    storage_service: Any, nats_server: Nats
) -> None:
    async with oidc_issuer() as issuer, guarded(storage_service, nats_server, issuer) as address:
        async with stubs(address, issuer.token()) as (_, tokens_api):
            who = await tokens_api.WhoAmI(apb.WhoAmIRequest())
        assert (who.subject, who.tenant, who.role, who.via) == (
            "alice",
            "team-a",
            "builder",
            "oidc",
        )
        fetched = issuer.fetches
        old = issuer.keys[0]
        issuer.rotate("k2")
        await asyncio.sleep(0.6)  # oidc_refetch_seconds
        async with stubs(address, issuer.token(sub="bob")) as (_, tokens_api):
            assert (await tokens_api.WhoAmI(apb.WhoAmIRequest())).subject == "bob"
        assert issuer.fetches == fetched + 1
        # A token of a key no longer published, and a burst of forged kids:
        # refused, and the issuer is not asked again and again.
        async with stubs(address, issuer.token(key=old)) as (_, tokens_api):
            assert await code_of(tokens_api.WhoAmI(apb.WhoAmIRequest())) == UNAUTHENTICATED
        for n in range(5):
            forged = issuer.token(key=new_key(f"forged-{n}"))
            async with stubs(address, forged) as (_, tokens_api):
                assert await code_of(tokens_api.WhoAmI(apb.WhoAmIRequest())) == UNAUTHENTICATED
        assert issuer.fetches <= fetched + 2


ALLOWED = {
    Role.VIEWER: {"list"},
    Role.BUILDER: {"list", "upload"},
    Role.PUBLISHER: {"list", "upload"},
    Role.SERVICE: {"list", "upload", "delete"},
    Role.ADMIN: {"list", "upload", "delete", "tokens"},
}


@pytest.mark.parametrize("role", list(ALLOWED), ids=[r.value for r in ALLOWED])
async def test_each_role_may_make_its_calls_and_no_others(
    storage_service: Any, nats_server: Nats, role: Role
) -> None:
    async with oidc_issuer() as issuer, issued(nats_server.url) as tokens:
        token, _ = await tokens.issue("team-a", role)
        async with (
            guarded(storage_service, nats_server, issuer) as address,
            stubs(address, token) as (storage, tokens_api),
        ):
            nobody = pb.DeleteArtifactRequest(id="0" * 26)  # past the role check: NOT_FOUND
            codes = {
                "list": await code_of(storage.ListArtifacts(pb.ListArtifactsRequest())),
                "upload": await code_of(await upload(storage)),
                "delete": await code_of(storage.DeleteArtifact(nobody)),
                "tokens": await code_of(tokens_api.ListTokens(apb.ListTokensRequest())),
            }
    assert {verb for verb, code in codes.items() if code != DENIED} == ALLOWED[role]
    passed = {code for verb, code in codes.items() if verb in ALLOWED[role]}
    assert passed <= {grpc.StatusCode.OK, grpc.StatusCode.NOT_FOUND}


async def test_an_admin_makes_lists_and_revokes_tokens_and_a_revoked_one_stops_at_once(
    storage_service: Any, nats_server: Nats
) -> None:
    async with oidc_issuer() as issuer, issued(nats_server.url) as tokens:
        admin, _ = await tokens.issue("ops", Role.ADMIN)
        async with guarded(storage_service, nats_server, issuer) as address:
            async with stubs(address, admin) as (_, tokens_api):
                made = await tokens_api.CreateToken(
                    apb.CreateTokenRequest(tenant="team-b", role="viewer", description="ci")
                )
                assert made.bearer.startswith(f"kiln_{made.token.id}_")
                listed = await tokens_api.ListTokens(apb.ListTokensRequest(tenant="team-b"))
                assert [t.id for t in listed.tokens] == [made.token.id]
                for bad in ("", "Team B", "x" * 64):
                    request = apb.CreateTokenRequest(tenant=bad, role="viewer")
                    assert (
                        await code_of(tokens_api.CreateToken(request))
                        == grpc.StatusCode.INVALID_ARGUMENT
                    )
                for role in ("root", "service"):  # service tokens are the stack's to make
                    request = apb.CreateTokenRequest(tenant="team-b", role=role)
                    code = await code_of(tokens_api.CreateToken(request))
                    assert code == grpc.StatusCode.INVALID_ARGUMENT
            async with stubs(address, made.bearer) as (storage, _):
                assert (
                    await code_of(storage.ListArtifacts(pb.ListArtifactsRequest()))
                    == grpc.StatusCode.OK
                )
            async with stubs(address, admin) as (_, tokens_api):
                gone = await tokens_api.RevokeToken(apb.RevokeTokenRequest(id=made.token.id))
                assert gone.HasField("revoked_at")
            async with stubs(address, made.bearer) as (storage, _):
                assert (
                    await code_of(storage.ListArtifacts(pb.ListArtifactsRequest()))
                    == UNAUTHENTICATED
                )
            # The client library sends the token it is given (or KILN_TOKEN).
            async with AsyncStorageClient(address, token=admin) as client:
                assert [a async for a in client.list()] == []


@pytest.mark.parametrize(
    "labels",
    [{"name": "layer-run", "kiln-layer": "run-0123"}, {"name": "web", "build-id": "b1"},
     {"name": "web", "kiln-kind": "image", "kiln-attempt": "1"}],
    ids=["a cache layer", "a build's output", "an image of an attempt"],
)  # fmt: skip
async def test_only_kilns_service_identity_writes_the_builders_labels(
    storage_service: Any, nats_server: Nats, labels: dict[str, str]
) -> None:
    """A tenant cannot make its artifact pass for a build output or a layer."""
    async with oidc_issuer() as issuer, issued(nats_server.url) as tokens:
        admin, _ = await tokens.issue("ops", Role.ADMIN)
        builder, _ = await tokens.issue("team-a", Role.BUILDER)
        service, _ = await tokens.issue("kiln", Role.SERVICE)
        async with guarded(storage_service, nats_server, issuer) as address:
            refused = []
            for token in (admin, builder, issuer.token(kiln_role="publisher")):
                async with stubs(address, token) as (storage, _):
                    refused.append(await code_of(await upload(storage, labels)))
            async with stubs(address, admin) as (storage, _):
                found = await storage.ListArtifacts(pb.ListArtifactsRequest())
            assert refused == [DENIED] * 3 and list(found.artifacts) == []
            async with stubs(address, service) as (storage, _):
                stored = await (await upload(storage, labels))
            assert dict(stored.labels) == labels


async def test_an_issuer_that_serves_no_keys_is_asked_once_a_window_not_once_a_call(
    storage_service: Any, nats_server: Nats
) -> None:
    """Unauthenticated callers must not drive requests to the issuer: while its
    keys cannot be had, JWTs are refused (UNAVAILABLE) without asking again."""
    async with oidc_issuer() as issuer:
        issuer.broken = True
        settings = dict(auth="required", nats_url=nats_server.url, oidc_issuer=issuer.url,
                        oidc_refetch_seconds=60)  # fmt: skip
        async with storage_service(**settings) as (_, address):
            codes = []
            for n in range(5):
                async with stubs(address, issuer.token(sub=f"caller-{n}")) as (storage, _):
                    codes.append(await code_of(storage.ListArtifacts(pb.ListArtifactsRequest())))
    assert codes == [grpc.StatusCode.UNAVAILABLE] * 5
    assert issuer.fetches == 1  # the service's start; none for the five calls


PUBLISHING = """\
name: id-test
version: "1.0"
from:
  bootstrap: {distro: debian, release: bookworm}
outputs: [qcow2]
publish:
  marketplace: true
"""


async def test_only_a_role_that_may_publish_submits_a_recipe_that_publishes(
    nats_server: Nats, tmp_path: Any
) -> None:
    """The publisher publishes a succeeded build's `publish:` targets on its own:
    submitting such a recipe is publishing, which the builder role may not do."""
    from kiln_api.builder.v1 import builder_pb2 as bpb
    from kiln_api.builder.v1 import builder_pb2_grpc as bpb_grpc
    from kiln_builder.service.app import build
    from kiln_builder.service.settings import BuilderSettings

    settings = BuilderSettings(
        grpc_bind="127.0.0.1:0", nats_url=nats_server.url, worker=False, auth="required",
        work_root=tmp_path / "work", cache_dir=tmp_path / "cache", shutdown_grace=1.0,
        outbox_dir=tmp_path / "outbox",
    )  # fmt: skip
    async with issued(nats_server.url) as tokens:
        builder, _ = await tokens.issue("team-a", Role.BUILDER)
        publisher, _ = await tokens.issue("team-a", Role.PUBLISHER)
        app = await build(settings)
        try:
            address = f"127.0.0.1:{await app.grpc.start()}"
            codes = {}
            for who, token in (("builder", builder), ("publisher", publisher)):
                for text in (PUBLISHING, PUBLISHING.split("publish:")[0]):
                    request = bpb.SubmitBuildRequest(recipe=bpb.RecipeSource(yaml=text))
                    metadata = (("authorization", f"Bearer {token}"),)
                    async with grpc.aio.insecure_channel(address) as channel:
                        call = bpb_grpc.BuilderStub(channel).SubmitBuild(request, metadata=metadata)
                        codes[who, "publish:" in text] = await code_of(call)
        finally:
            await app.stop()
    assert codes == {
        ("builder", True): DENIED, ("builder", False): grpc.StatusCode.OK,
        ("publisher", True): grpc.StatusCode.OK, ("publisher", False): grpc.StatusCode.OK,
    }  # fmt: skip


def issue_cli(*args: str) -> Any:
    """`python -m kiln_common.auth.issue` as an operator runs it."""
    import subprocess
    import sys

    return subprocess.run(
        [sys.executable, "-m", "kiln_common.auth.issue", *args],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


async def test_the_first_tokens_of_a_deployment_are_made_straight_in_nats(
    nats_server: Nats,
) -> None:
    """No token exists yet to call the Tokens API with (deploy/k8s/README.md)."""
    url = nats_server.url
    done = await asyncio.to_thread(
        issue_cli, "--tenant", "ops", "--role", "admin", "--expires", "1d", "--nats-url", url
    )
    assert done.returncode == 0, done.stderr
    bearer = done.stdout.strip()
    async with issued(nats_server.url) as tokens:
        who = await tokens.authenticate(bearer)
    assert (who.tenant, who.role) == ("ops", Role.ADMIN)
    assert bearer not in done.stderr  # printed once, on stdout
    bad = await asyncio.to_thread(issue_cli, "--tenant", "ops", "--role", "root", "--nats-url", url)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
