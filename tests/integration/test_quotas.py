"""Quotas and fair scheduling, on a real nats-server and storage service and a
builder whose worker runs real builds (each fails at its first step, fetching
a base artifact that does not exist: a second or two a build). Over a quota
is RESOURCE_EXHAUSTED naming the limit, with nothing stored; one tenant's
queue does not hold back another's build."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import nats
import pytest
from support import Authed, bearer

from kiln_api.builder.v1 import builder_pb2 as bpb
from kiln_api.builder.v1 import builder_pb2_grpc as bpb_grpc
from kiln_api.storage.v1 import storage_pb2 as spb
from kiln_api.storage.v1 import storage_pb2_grpc as spb_grpc
from kiln_common.auth import Role
from kiln_common.auth.static import StaticTokens
from kiln_common.grpc_server import CHANNEL_OPTIONS
from kiln_devstack.devservers import Nats

pytestmark = pytest.mark.integration
EXHAUSTED = grpc.StatusCode.RESOURCE_EXHAUSTED
QUICK = """\
name: quick-{n}
version: "1"
from:
  image: {{artifact: "01j0abcdefghjkmnpqrstvwxyz"}}
outputs: [qcow2]
"""
ENDED = (bpb.BUILD_STATE_SUCCEEDED, bpb.BUILD_STATE_FAILED, bpb.BUILD_STATE_CANCELLED)


@dataclass
class Services:
    storage: str
    builder: str
    tokens: dict[str, str]

    @asynccontextmanager
    async def stubs(self, who: str) -> AsyncIterator[tuple[Any, Any]]:
        metadata = bearer(self.tokens[who])
        async with (
            grpc.aio.insecure_channel(self.storage, options=CHANNEL_OPTIONS) as s,
            grpc.aio.insecure_channel(self.builder, options=CHANNEL_OPTIONS) as b,
        ):
            yield (
                Authed(spb_grpc.StorageStub(s), metadata),
                Authed(bpb_grpc.BuilderStub(b), metadata),
            )


@asynccontextmanager
async def services(
    storage_service: Any, nats_server: Nats, tmp: Path, quotas: dict[str, Any], *,
    worker: bool = False, concurrency: int = 1,
) -> AsyncIterator[Services]:  # fmt: skip
    from kiln_builder.service.app import build
    from kiln_builder.service.settings import BuilderSettings

    nc = await nats.connect(nats_server.url)
    try:
        issue = StaticTokens(nc.jetstream()).issue
        tokens = {
            "a": (await issue("team-a", Role.BUILDER))[0],
            "b": (await issue("team-b", Role.BUILDER))[0],
            "service": (await issue("kiln", Role.SERVICE))[0],
        }
    finally:
        await nc.close()
    common = {"nats_url": nats_server.url, "auth": "required", "quotas": quotas}
    async with storage_service(**common) as (_, storage):
        app = await build(
            BuilderSettings(
                grpc_bind="127.0.0.1:0",
                worker=worker,
                concurrency=concurrency,
                storage=storage,
                token=tokens["service"],
                work_root=tmp / "work",
                cache_dir=tmp / "cache",
                outbox_dir=tmp / "outbox",
                shutdown_grace=1.0,
                **common,
            )
        )
        try:
            yield Services(storage, f"127.0.0.1:{await app.grpc.start()}", tokens)
        finally:
            await app.stop()


async def code_and_message(call: Any) -> tuple[grpc.StatusCode, str]:
    try:
        await call
    except grpc.aio.AioRpcError as exc:
        return exc.code(), exc.details() or ""
    return grpc.StatusCode.OK, ""


def submit(builder: Any, n: int) -> Any:
    text = QUICK.format(n=n)
    return builder.SubmitBuild(bpb.SubmitBuildRequest(recipe=bpb.RecipeSource(yaml=text)))


async def test_a_tenant_past_its_queued_builds_quota_is_refused_and_nothing_is_queued(
    storage_service: Any, nats_server: Nats, tmp_path: Path
) -> None:
    quotas = {"team-a": {"queued_builds": 2}}
    async with (
        services(storage_service, nats_server, tmp_path, quotas) as stack,
        stack.stubs("a") as (_, a),
        stack.stubs("b") as (_, b),
    ):
        first = [await submit(a, n) for n in range(2)]
        refused = await code_and_message(submit(a, 3))
        others = [await submit(b, n) for n in range(3)]  # team-b has no quota
        listed = await a.ListBuilds(bpb.ListBuildsRequest())
    assert refused[0] == EXHAUSTED, refused
    assert "queued builds: 2" in refused[1] and "team-a" in refused[1]
    assert sorted(x.id for x in listed.builds) == sorted(x.id for x in first)
    assert len(others) == 3


async def test_a_tenant_past_its_stored_bytes_quota_is_refused_and_nothing_is_stored(
    storage_service: Any, nats_server: Nats, tmp_path: Path
) -> None:
    quotas = {"*": {"stored_bytes": 1000}, "team-b": {}}
    async with (
        services(storage_service, nats_server, tmp_path, quotas) as stack,
        stack.stubs("a") as (a, _),
        stack.stubs("b") as (b, _),
    ):

        def upload(stub: Any, size: int, declared: bool = False) -> Any:
            async def requests() -> AsyncIterator[spb.UploadRequest]:
                header = spb.UploadHeader(labels={"name": "q"}, size=size if declared else None)
                yield spb.UploadRequest(header=header)
                yield spb.UploadRequest(chunk=b"x" * size)

            return stub.Upload(requests())

        kept = await upload(a, 600)
        over = await code_and_message(upload(a, 600))
        declared = await code_and_message(upload(a, 600, declared=True))
        resumable = await code_and_message(
            a.CreateUpload(spb.CreateUploadRequest(labels={"name": "q"}, size=401))
        )
        fits = await upload(a, 400)
        theirs = await upload(b, 5000)  # team-b's own entry: no limit
        listed = await a.ListArtifacts(spb.ListArtifactsRequest())
    assert [over[0], declared[0], resumable[0]] == [EXHAUSTED] * 3
    assert all("stored bytes: 1000" in m for _, m in (over, declared, resumable))
    assert sorted(x.id for x in listed.artifacts) == sorted([kept.id, fits.id])
    assert theirs.size == 5000


async def ended_builds(builder: Any, count: int) -> list[Any]:
    """Every build, once count of them have ended (60 s at most)."""
    async with asyncio.timeout(60):
        while True:
            builds = list((await builder.ListBuilds(bpb.ListBuildsRequest())).builds)
            if sum(b.state in ENDED for b in builds) >= count:
                return builds
            await asyncio.sleep(0.2)


async def wait_running(builder: Any, build_id: str) -> None:
    async with asyncio.timeout(30):
        while True:
            build = await builder.GetBuild(bpb.GetBuildRequest(id=build_id))
            if build.state != bpb.BUILD_STATE_QUEUED:
                return
            await asyncio.sleep(0.05)


async def test_one_tenants_queue_does_not_hold_back_another_tenants_build(
    storage_service: Any, nats_server: Nats, tmp_path: Path
) -> None:
    """One build slot; team-a queues five builds, team-b then one: team-b's
    starts as soon as the slot is free, not after team-a's five."""
    async with (
        services(storage_service, nats_server, tmp_path, {}, worker=True) as stack,
        stack.stubs("a") as (_, a),
        stack.stubs("b") as (_, b),
        stack.stubs("service") as (_, everyone),
    ):
        theirs = [await submit(a, n) for n in range(5)]
        await wait_running(a, theirs[0].id)  # team-a's first holds the slot
        mine = await submit(b, 0)
        builds = await ended_builds(everyone, 6)
    assert all(x.state == bpb.BUILD_STATE_FAILED for x in builds), [x.error for x in builds]
    started = [x.id for x in sorted(builds, key=lambda x: x.started.ToNanoseconds())]
    print(f"start order: {['b' if i == mine.id else 'a' for i in started]}")
    assert started.index(mine.id) == 1, "team-b's build takes the next free slot"


async def test_a_tenant_at_its_concurrent_builds_quota_waits_while_others_run(
    storage_service: Any, nats_server: Nats, tmp_path: Path
) -> None:
    """Two slots, team-a may run one build at a time: its builds never
    overlap, and team-b's runs beside them."""
    quotas = {"team-a": {"concurrent_builds": 1}}
    async with (
        services(storage_service, nats_server, tmp_path, quotas, worker=True, concurrency=2)
        as stack,
        stack.stubs("a") as (_, a),
        stack.stubs("b") as (_, b),
        stack.stubs("service") as (_, everyone),
    ):  # fmt: skip
        for n in range(4):
            await submit(a, n)
        await submit(b, 0)
        builds = await ended_builds(everyone, 5)
    spans = sorted(
        (x.started.ToNanoseconds(), x.finished.ToNanoseconds())
        for x in builds
        if x.tenant == "team-a"
    )
    overlaps = [(s, f) for (_, f), (s, _) in itertools.pairwise(spans) if s < f]
    assert len(spans) == 4 and not overlaps, "team-a never ran two builds at once"
