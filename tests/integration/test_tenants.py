"""Tenants: a real nats-server, storage service, Builder API and publisher,
all with `auth: required`, and two tenants' tokens. Tenant A tries every API
on tenant B's build, artifact, upload, publication and marketplace entry:
each answers NOT_FOUND in the words an unknown id gets, and B's objects are
unchanged afterwards."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import nats
import pytest
from google.protobuf.duration_pb2 import Duration
from support import Authed, bearer

from kiln_api.builder.v1 import builder_pb2 as bpb
from kiln_api.builder.v1 import builder_pb2_grpc as bpb_grpc
from kiln_api.publisher.v1 import publisher_pb2 as ppb
from kiln_api.publisher.v1 import publisher_pb2_grpc as ppb_grpc
from kiln_api.storage.v1 import storage_pb2 as spb
from kiln_api.storage.v1 import storage_pb2_grpc as spb_grpc
from kiln_common.auth import Role
from kiln_common.auth.identity import ACTING_FOR_HEADER
from kiln_common.auth.static import StaticTokens
from kiln_common.grpc_server import CHANNEL_OPTIONS
from kiln_devstack.devservers import Nats

pytestmark = pytest.mark.integration
NOT_FOUND = grpc.StatusCode.NOT_FOUND
UNKNOWN = "0" * 26  # a well-formed id nothing has
ENDORSER = "tenants@example.org"
RECIPE = """\
name: tenant-b
version: "1.0"
from:
  bootstrap: {distro: debian, release: bookworm}
outputs: [qcow2]
"""


@dataclass
class Api:
    """One caller's stubs of the three services; every call carries its token."""

    storage: Any
    builder: Any
    publisher: Any


@dataclass
class Stack:
    storage: str
    builder: str
    publisher: str
    tokens: dict[str, str]

    @asynccontextmanager
    async def api(self, who: str, acting_for: str = "") -> AsyncIterator[Api]:
        metadata = bearer(self.tokens[who])
        if acting_for:
            metadata += ((ACTING_FOR_HEADER, acting_for),)
        addresses = (self.storage, self.builder, self.publisher)
        stubs = (spb_grpc.StorageStub, bpb_grpc.BuilderStub, ppb_grpc.PublisherStub)
        channels = [grpc.aio.insecure_channel(a, options=CHANNEL_OPTIONS) for a in addresses]
        try:
            yield Api(*(Authed(s(c), metadata) for s, c in zip(stubs, channels, strict=True)))
        finally:
            for channel in channels:
                await channel.close()


@asynccontextmanager
async def two_tenants(storage_service: Any, nats_server: Nats, tmp: Path) -> AsyncIterator[Stack]:
    """The three services, and tokens: a (publisher of team-a), a-admin,
    b (publisher of team-b), service (Kiln's own)."""
    from kiln_builder.service.app import build as build_builder
    from kiln_builder.service.settings import BuilderSettings
    from kiln_publisher.app import build as build_publisher
    from kiln_publisher.settings import PublisherSettings

    nc = await nats.connect(nats_server.url)
    try:
        issue = StaticTokens(nc.jetstream()).issue
        tokens = {
            "a": (await issue("team-a", Role.PUBLISHER))[0],
            "a-admin": (await issue("team-a", Role.ADMIN))[0],
            "b": (await issue("team-b", Role.PUBLISHER))[0],
            "service": (await issue("kiln", Role.SERVICE))[0],
        }
    finally:
        await nc.close()
    # A cloud only team-b may use; its Keystone is a loopback port nothing
    # listens on (team-a is refused before any connection is tried).
    (tmp / "clouds.yaml").write_text(
        "clouds:\n  b-cloud:\n    auth:\n      auth_url: http://127.0.0.1:9/v3\n"
        "      username: u\n      password: p\n      project_name: p\n"
        "      user_domain_name: Default\n      project_domain_name: Default\n"
    )
    common = {"nats_url": nats_server.url, "auth": "required", "shutdown_grace": 1.0}
    async with storage_service(**common) as (_, storage):
        builder = await build_builder(
            BuilderSettings(
                grpc_bind="127.0.0.1:0",
                worker=False,
                work_root=tmp / "work",
                cache_dir=tmp / "cache",
                outbox_dir=tmp / "builder-outbox",
                **common,
            )
        )
        try:
            builder_at = f"127.0.0.1:{await builder.grpc.start()}"
            publisher = await build_publisher(
                PublisherSettings(
                    grpc_bind="127.0.0.1:0",
                    http_port=0,
                    storage=storage,
                    builder=builder_at,
                    keyring_dir=tmp / "keyring",
                    endorser_key_dir=tmp / "endorsers",
                    local_endorser=ENDORSER,
                    default_endorser=ENDORSER,
                    clouds_yaml=tmp / "clouds.yaml",
                    auto_publish=False,
                    tenants={
                        "team-a": {"endorsers": ["*"]},
                        "team-b": {"clouds": ["b-cloud"], "endorsers": ["*"]},
                    },
                    token=tokens["service"],
                    **common,
                )
            )
            try:
                publisher_at = f"127.0.0.1:{await publisher.grpc.start()}"
                yield Stack(storage, builder_at, publisher_at, tokens)
            finally:
                await publisher.stop()
        finally:
            await builder.stop()


async def refusal(call: Awaitable[Any] | Any) -> tuple[grpc.StatusCode, str]:
    """The call's status and message (a stream is read to its end)."""
    try:
        if hasattr(call, "__aiter__"):
            async for _ in call:
                pass
        else:
            await call
    except grpc.aio.AioRpcError as exc:
        return exc.code(), exc.details() or ""
    return grpc.StatusCode.OK, ""


async def upload(api: Api, data: bytes, name: str) -> Any:
    async def requests() -> AsyncIterator[spb.UploadRequest]:
        labels = {"name": name, "version": "1.0", "format": "qcow2"}
        yield spb.UploadRequest(header=spb.UploadHeader(labels=labels))
        yield spb.UploadRequest(chunk=data)

    return await api.storage.Upload(requests())


@dataclass
class TenantB:
    build: Any
    artifact: Any
    upload_id: str
    publication: Any
    entry: str


async def tenant_b_objects(b: Api) -> TenantB:
    submit = bpb.SubmitBuildRequest(recipe=bpb.RecipeSource(yaml=RECIPE), idempotency_key="k1")
    build = await b.builder.SubmitBuild(submit)
    artifact = await upload(b, b"tenant b's image", "b-image")
    session = await b.storage.CreateUpload(spb.CreateUploadRequest(labels={"name": "b-part"}))
    publication = await b.publisher.Publish(
        ppb.PublishRequest(artifact_id=artifact.id, marketplace=ppb.MarketplaceTarget())
    )
    (result,) = publication.results
    assert result.state == ppb.STATE_DONE, result.error
    return TenantB(build, artifact, session.upload_id, publication, result.entry_identifier)


# Each API A tries on B's object: a name, and a call of A's stubs given (B's
# object's id or an unknown id of the same kind). NOT_FOUND for both, in the
# same words, is what the test wants.
Probe = Callable[[Api, str], Any]


def probes(b: TenantB) -> dict[str, tuple[str, Probe]]:
    week = Duration(seconds=7 * 24 * 3600)
    glance = ppb.GlanceImageRef(cloud="b-cloud", image="b-image")
    return {
        "get a build": (b.build.id, lambda a, i: a.builder.GetBuild(bpb.GetBuildRequest(id=i))),
        "watch a build (its logs)": (
            b.build.id,
            lambda a, i: a.builder.WatchBuild(bpb.WatchBuildRequest(id=i)),
        ),
        "read a build's recipe": (
            b.build.id,
            lambda a, i: a.builder.GetBuildRecipe(bpb.GetBuildRequest(id=i)),
        ),
        "cancel a build": (
            b.build.id,
            lambda a, i: a.builder.CancelBuild(bpb.CancelBuildRequest(id=i)),
        ),
        "stat an artifact": (
            b.artifact.id,
            lambda a, i: a.storage.StatArtifact(spb.StatArtifactRequest(id=i)),
        ),
        "download an artifact": (
            b.artifact.id,
            lambda a, i: a.storage.Download(spb.DownloadRequest(id=i)),
        ),
        "mint a download URL": (
            b.artifact.id,
            lambda a, i: a.storage.GetDownloadUrl(spb.GetDownloadUrlRequest(id=i, expires_in=week)),
        ),
        "delete an artifact (as A's admin)": (
            b.artifact.id,
            lambda a, i: a.storage.DeleteArtifact(spb.DeleteArtifactRequest(id=i)),
        ),
        "read an upload session": (
            b.upload_id,
            lambda a, i: a.storage.GetUpload(spb.GetUploadRequest(upload_id=i)),
        ),
        "abort an upload session": (
            b.upload_id,
            lambda a, i: a.storage.AbortUpload(spb.AbortUploadRequest(upload_id=i)),
        ),
        "publish an artifact": (
            b.artifact.id,
            lambda a, i: a.publisher.Publish(
                ppb.PublishRequest(artifact_id=i, marketplace=ppb.MarketplaceTarget())
            ),
        ),
        "publish a build": (
            b.build.id,
            lambda a, i: a.publisher.Publish(
                ppb.PublishRequest(build_id=i, marketplace=ppb.MarketplaceTarget())
            ),
        ),
        "get a publication": (
            b.publication.id,
            lambda a, i: a.publisher.GetPublication(ppb.GetPublicationRequest(id=i)),
        ),
        "deprecate an entry": (
            b.entry,
            lambda a, i: a.publisher.DeprecateEntry(ppb.DeprecateEntryRequest(identifier=i)),
        ),
        "fetch a Glance base from B's cloud": (
            glance.image,
            lambda a, i: a.publisher.FetchBase(
                ppb.FetchBaseRequest(glance=ppb.GlanceImageRef(cloud="b-cloud", image=i))
            ),
        ),
    }


def unknown_like(object_id: str) -> str:
    """An id of the same shape that nothing has."""
    if object_id.startswith("auto-") or len(object_id) == 26:
        return UNKNOWN
    return "unknown-" + object_id[8:] if len(object_id) > 8 else "unknown"


async def test_a_tenant_finds_none_of_another_tenants_objects_through_any_api(
    storage_service: Any, nats_server: Nats, tmp_path: Path
) -> None:
    async with two_tenants(storage_service, nats_server, tmp_path) as stack:
        async with stack.api("b") as b:
            objects = await tenant_b_objects(b)
            before = (
                await b.builder.GetBuild(bpb.GetBuildRequest(id=objects.build.id)),
                await b.storage.StatArtifact(spb.StatArtifactRequest(id=objects.artifact.id)),
                await b.publisher.GetPublication(
                    ppb.GetPublicationRequest(id=objects.publication.id)
                ),
                await b.publisher.GetEntry(ppb.GetEntryRequest(identifier=objects.entry)),
            )
        answers = {}
        async with stack.api("a") as a, stack.api("a-admin") as admin:
            for what, (object_id, probe) in probes(objects).items():
                caller = admin if "admin" in what else a
                other = unknown_like(object_id)
                mine = await refusal(probe(caller, object_id))
                unknown = await refusal(probe(caller, other))
                answers[what] = (mine[0], mine[1].replace(object_id, "<id>"),
                                 unknown[0], unknown[1].replace(other, "<id>"))  # fmt: skip
            # Listings leave B's objects out; A's own are there.
            mine = await upload(a, b"tenant a's image", "a-image")
            listed = {
                "builds": [
                    x.id for x in (await a.builder.ListBuilds(bpb.ListBuildsRequest())).builds
                ],
                "artifacts": [
                    x.id
                    for x in (await a.storage.ListArtifacts(spb.ListArtifactsRequest())).artifacts
                ],
                "publications": [
                    x.id
                    for x in (
                        await a.publisher.ListPublications(ppb.ListPublicationsRequest())
                    ).publications
                ],
            }
            # A's idempotency key is A's: the same key makes A its own build.
            again = await a.builder.SubmitBuild(
                bpb.SubmitBuildRequest(recipe=bpb.RecipeSource(yaml=RECIPE), idempotency_key="k1")
            )
        async with stack.api("b") as b:
            after = (
                await b.builder.GetBuild(bpb.GetBuildRequest(id=objects.build.id)),
                await b.storage.StatArtifact(spb.StatArtifactRequest(id=objects.artifact.id)),
                await b.publisher.GetPublication(
                    ppb.GetPublicationRequest(id=objects.publication.id)
                ),
                await b.publisher.GetEntry(ppb.GetEntryRequest(identifier=objects.entry)),
            )
            kept = await b.storage.GetUpload(spb.GetUploadRequest(upload_id=objects.upload_id))
            data = b"".join(
                [
                    c.data
                    async for c in b.storage.Download(spb.DownloadRequest(id=objects.artifact.id))
                ]
            )
            b_glance = await refusal(
                b.publisher.FetchBase(
                    ppb.FetchBaseRequest(glance=ppb.GlanceImageRef(cloud="b-cloud", image="x"))
                )
            )
    refused = {what: answer for what, answer in answers.items() if answer[0] == NOT_FOUND}
    assert refused == answers, "every call on B's objects is NOT_FOUND"
    different = {w: a for w, a in answers.items() if (a[0], a[1]) != (a[2], a[3])}
    assert not different, "B's objects answer as unknown ids do, word for word"
    print(f"cross-tenant calls tried and refused: {len(refused)} (+3 listings filtered)")
    assert objects.build.id not in listed["builds"] and again.id not in ("", objects.build.id)
    assert listed["artifacts"] == [mine.id]
    assert objects.publication.id not in listed["publications"]
    # B's objects are as they were: not cancelled, deleted, aborted or deprecated.
    assert before[0].state == after[0].state == bpb.BUILD_STATE_QUEUED
    assert not after[0].cancel_requested
    assert before[1:3] == after[1:3]
    assert before[3].status == after[3].status == "valid"
    assert kept.upload_id == objects.upload_id and data == b"tenant b's image"
    # B may use its cloud: FetchBase goes on to its (absent) Keystone.
    assert b_glance[0] != NOT_FOUND


async def test_only_kilns_service_acts_for_a_tenant_and_then_sees_only_that_tenants_objects(
    storage_service: Any, nats_server: Nats, tmp_path: Path
) -> None:
    async with two_tenants(storage_service, nats_server, tmp_path) as stack:
        async with stack.api("b") as b:
            theirs = await upload(b, b"b", "b-image")
        async with stack.api("a", acting_for="team-b") as a:
            code, message = await refusal(
                a.storage.StatArtifact(spb.StatArtifactRequest(id=theirs.id))
            )
        assert code == grpc.StatusCode.PERMISSION_DENIED and "act for a tenant" in message
        async with stack.api("service", acting_for="team-a") as for_a:
            hidden = await refusal(
                for_a.storage.StatArtifact(spb.StatArtifactRequest(id=theirs.id))
            )
            made = await upload(for_a, b"made for a", "a-image")
        async with stack.api("service", acting_for="team-b") as for_b:
            seen = await for_b.storage.StatArtifact(spb.StatArtifactRequest(id=theirs.id))
        async with stack.api("service") as everyone:
            listed = await everyone.storage.ListArtifacts(spb.ListArtifactsRequest())
    assert hidden[0] == NOT_FOUND and seen.tenant == "team-b"
    assert made.tenant == "team-a"  # what a build's worker stores is its tenant's
    assert {x.id for x in listed.artifacts} == {theirs.id, made.id}
