"""The Builder API in-process against a real nats-server, without a worker:
submitting, idempotency, validation, listing, watching, cancelling a queued
build, and records that outlive the process that wrote them."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

import grpc
import nats
import pytest
from google.protobuf.struct_pb2 import Struct

from kiln_api.builder.v1 import builder_pb2 as pb
from kiln_api.builder.v1 import builder_pb2_grpc as pb_grpc
from kiln_builder.service import queue
from kiln_builder.service.app import build
from kiln_builder.service.settings import BuilderSettings
from kiln_common.events import STREAM as EVENTS
from kiln_common.grpc_server import CHANNEL_OPTIONS
from kiln_devstack.devservers import Nats

pytestmark = pytest.mark.integration

RECIPE = """\
name: api-test
version: "1.0"
from:
  bootstrap: {distro: debian, release: bookworm}
outputs: [tar]
"""

Builder = Callable[[], AbstractAsyncContextManager[pb_grpc.BuilderStub]]


@pytest.fixture
def builder(nats_server: Nats, tmp_path: Path) -> Builder:
    """An API-only builder (no worker) on a free port; a new one per call,
    all sharing the one nats-server."""

    @asynccontextmanager
    async def start() -> AsyncIterator[pb_grpc.BuilderStub]:
        settings = BuilderSettings(
            grpc_bind="127.0.0.1:0", nats_url=nats_server.url, worker=False,
            work_root=tmp_path / "work", cache_dir=tmp_path / "cache", shutdown_grace=1.0,
            outbox_dir=tmp_path / "outbox",
        )  # fmt: skip
        app = await build(settings)
        try:
            port = await app.grpc.start()
            async with grpc.aio.insecure_channel(
                f"127.0.0.1:{port}", options=CHANNEL_OPTIONS
            ) as channel:
                yield pb_grpc.BuilderStub(channel)
        finally:
            await app.stop()

    return start


def source(text: str = RECIPE, **files: bytes) -> pb.RecipeSource:
    return pb.RecipeSource(yaml=text, filename="recipe.yaml", files=files)


async def queued_messages(url: str) -> int:
    nc = await nats.connect(url)
    try:
        info = await nc.jetstream().stream_info(queue.STREAM)
        return int(info.state.messages)
    finally:
        await nc.close()


async def updates(stub: pb_grpc.BuilderStub, build_id: str, **kw: Any) -> list[pb.BuildUpdate]:
    return [u async for u in stub.WatchBuild(pb.WatchBuildRequest(id=build_id, **kw))]


async def test_submit_records_queues_and_announces_a_build(
    builder: Builder, nats_server: Nats
) -> None:
    async with builder() as stub:
        submitted = await stub.SubmitBuild(pb.SubmitBuildRequest(recipe=source()))
        got = await stub.GetBuild(pb.GetBuildRequest(id=submitted.id))
        seen = await updates(stub, submitted.id, stored_only=True)
    assert got.state == pb.BUILD_STATE_QUEUED
    assert (got.name, got.version) == ("api-test", "1.0")
    assert len(got.recipe_digest) == 64 and got.created.seconds > 0
    assert await queued_messages(nats_server.url) == 1
    assert [u.state for u in seen] == [pb.BUILD_STATE_QUEUED] and seen[0].seq > 0
    nc = await nats.connect(nats_server.url)
    try:
        msg = await nc.jetstream().get_last_msg(EVENTS, "kiln.events.build.queued")
        event = json.loads(msg.data)
        assert event["type"] == "build.queued" and event["data"]["id"] == submitted.id
    finally:
        await nc.close()


async def test_the_same_idempotency_key_returns_the_same_build(
    builder: Builder, nats_server: Nats
) -> None:
    request = pb.SubmitBuildRequest(recipe=source(), idempotency_key="release-1.0")
    async with builder() as stub:
        first = await stub.SubmitBuild(request)
        again = await stub.SubmitBuild(request)
        other = source(RECIPE.replace('"1.0"', '"1.1"'))
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.SubmitBuild(
                pb.SubmitBuildRequest(recipe=other, idempotency_key="release-1.0")
            )
    assert again.id == first.id
    assert await queued_messages(nats_server.url) == 1
    assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert "different recipe" in (err.value.details() or "")


async def test_an_invalid_recipe_is_refused_naming_field_and_line(builder: Builder) -> None:
    bad = RECIPE.replace("outputs: [tar]", "outputs: [tar]\ndisk: {size: lots}")
    async with builder() as stub:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.SubmitBuild(pb.SubmitBuildRequest(recipe=source(bad)))
        checked = await stub.ValidateRecipe(pb.ValidateRecipeRequest(recipe=source(bad)))
        good = await stub.ValidateRecipe(pb.ValidateRecipeRequest(recipe=source()))
        listed = await stub.ListBuilds(pb.ListBuildsRequest())
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "disk.size" in (err.value.details() or "")
    assert not checked.valid
    assert [(p.field, p.line) for p in checked.problems] == [("disk.size", 6)]
    assert good.valid and good.name == "api-test" and len(good.digest) == 64
    assert not listed.builds  # nothing was recorded for the refused one


async def test_files_the_recipe_names_travel_with_it(builder: Builder) -> None:
    text = (
        RECIPE + "files:\n  - {path: /etc/motd, source: files/motd}\nrun:\n  - script: setup.sh\n"
    )
    async with builder() as stub:
        missing = await stub.ValidateRecipe(pb.ValidateRecipeRequest(recipe=source(text)))
        whole = source(text, **{"files/motd": b"hello\n", "setup.sh": b"true\n"})
        ok = await stub.ValidateRecipe(pb.ValidateRecipeRequest(recipe=whole))
        escaping = source(text, **{"../motd": b"x"})
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.SubmitBuild(pb.SubmitBuildRequest(recipe=escaping))
    assert {p.field for p in missing.problems} == {"files[0].source", "run[0].script"}
    assert ok.valid
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_a_builds_recipe_is_handed_out_as_it_was_submitted(builder: Builder) -> None:
    """GetBuildRecipe: how the publisher learns a build's recipe (it reads no
    bucket of the builder's)."""
    text = RECIPE + "files:\n  - {path: /etc/motd, source: files/motd}\n"
    async with builder() as stub:
        b = await stub.SubmitBuild(
            pb.SubmitBuildRequest(recipe=source(text, **{"files/motd": b"hello\n"}))
        )
        got = await stub.GetBuildRecipe(pb.GetBuildRequest(id=b.id))
        with pytest.raises(grpc.aio.AioRpcError) as missing:
            await stub.GetBuildRecipe(pb.GetBuildRequest(id="0" * 26))
    assert got.yaml == text
    assert dict(got.files) == {"files/motd": b"hello\n"}
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND


async def test_a_structured_recipe_is_the_same_recipe(builder: Builder) -> None:
    doc = Struct()
    doc.update({"name": "api-test", "version": "1.0", "outputs": ["tar"],
                "from": {"bootstrap": {"distro": "debian", "release": "bookworm"}}})  # fmt: skip
    async with builder() as stub:
        as_text = await stub.ValidateRecipe(pb.ValidateRecipeRequest(recipe=source()))
        as_struct = await stub.ValidateRecipe(
            pb.ValidateRecipeRequest(recipe=pb.RecipeSource(structured=doc))
        )
        sized = Struct()
        sized.update({**json.loads(json.dumps(dict(doc.items()), default=_plain)),
                      "disk": {"size": 4294967296}})  # fmt: skip
        big = await stub.ValidateRecipe(
            pb.ValidateRecipeRequest(recipe=pb.RecipeSource(structured=sized))
        )
    assert as_struct.valid and as_struct.digest == as_text.digest
    assert big.valid, big.problems


def _plain(value: Any) -> Any:
    from google.protobuf.json_format import MessageToDict

    return MessageToDict(value)


async def test_list_filters_and_pages_newest_first(builder: Builder) -> None:
    async with builder() as stub:
        ids = [
            (await stub.SubmitBuild(pb.SubmitBuildRequest(recipe=source()))).id for _ in range(5)
        ]
        other = RECIPE.replace("name: api-test", "name: other")
        odd = await stub.SubmitBuild(pb.SubmitBuildRequest(recipe=source(other)))
        first = await stub.ListBuilds(pb.ListBuildsRequest(name="api-test", page_size=3))
        rest = await stub.ListBuilds(
            pb.ListBuildsRequest(name="api-test", page_size=3, page_token=first.next_page_token)
        )
        await stub.CancelBuild(pb.CancelBuildRequest(id=ids[0]))
        cancelled = await stub.ListBuilds(pb.ListBuildsRequest(state=pb.BUILD_STATE_CANCELLED))
        everything = await stub.ListBuilds(pb.ListBuildsRequest())
    assert [b.id for b in first.builds] + [b.id for b in rest.builds] == ids[::-1]
    assert first.next_page_token and not rest.next_page_token
    assert [b.id for b in cancelled.builds] == [ids[0]]
    assert everything.builds[0].id == odd.id


async def test_a_build_submitted_through_one_pod_is_listed_by_another_at_once(
    builder: Builder,
) -> None:
    async with builder() as first, builder() as second:
        await second.ListBuilds(pb.ListBuildsRequest())  # its index is built
        for _ in range(3):
            submitted = await first.SubmitBuild(pb.SubmitBuildRequest(recipe=source()))
            listed = await second.ListBuilds(pb.ListBuildsRequest(page_size=1))
            assert [b.id for b in listed.builds] == [submitted.id]
        await first.CancelBuild(pb.CancelBuildRequest(id=submitted.id))
        cancelled = await second.ListBuilds(pb.ListBuildsRequest(state=pb.BUILD_STATE_CANCELLED))
        assert [b.id for b in cancelled.builds] == [submitted.id]


async def test_cancelling_a_queued_build_ends_it_at_once(builder: Builder) -> None:
    async with builder() as stub:
        b = await stub.SubmitBuild(pb.SubmitBuildRequest(recipe=source()))
        cancelled = await stub.CancelBuild(pb.CancelBuildRequest(id=b.id))
        seen = await updates(stub, b.id)  # ends by itself: the build has ended
        with pytest.raises(grpc.aio.AioRpcError) as again:
            await stub.CancelBuild(pb.CancelBuildRequest(id=b.id))
    assert cancelled.state == pb.BUILD_STATE_CANCELLED and cancelled.cancel_requested
    assert [u.state for u in seen] == [pb.BUILD_STATE_QUEUED, pb.BUILD_STATE_CANCELLED]
    assert again.value.code() == grpc.StatusCode.FAILED_PRECONDITION


async def test_a_watch_resumes_after_the_last_sequence_seen(builder: Builder) -> None:
    async with builder() as stub:
        b = await stub.SubmitBuild(pb.SubmitBuildRequest(recipe=source()))
        await stub.CancelBuild(pb.CancelBuildRequest(id=b.id))
        everything = await updates(stub, b.id)
        resumed = await updates(stub, b.id, after_seq=everything[0].seq)
        past_the_end = await updates(stub, b.id, after_seq=everything[-1].seq)
    assert [u.seq for u in resumed] == [everything[1].seq]
    assert past_the_end == []


async def test_unknown_and_malformed_ids(builder: Builder) -> None:
    async with builder() as stub:
        with pytest.raises(grpc.aio.AioRpcError) as missing:
            await stub.GetBuild(pb.GetBuildRequest(id="0" * 26))
        with pytest.raises(grpc.aio.AioRpcError) as bad:
            await stub.GetBuild(pb.GetBuildRequest(id="../etc"))
        with pytest.raises(grpc.aio.AioRpcError) as watched:
            await updates(stub, "0" * 26)
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND
    assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert watched.value.code() == grpc.StatusCode.NOT_FOUND


async def test_records_outlive_the_builder_that_wrote_them(builder: Builder) -> None:
    async with builder() as stub:
        b = await stub.SubmitBuild(pb.SubmitBuildRequest(recipe=source()))
    async with builder() as other_pod:
        got = await other_pod.GetBuild(pb.GetBuildRequest(id=b.id))
    assert got == b
