"""ListArtifacts through the index, on both backends (the filesystem and a real
SeaweedFS): selectors across pages and deletes, stale markers, the rebuild of
a store written without an index, and bad paging arguments."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import pytest
from support import s3_settings, storage_stub

from kiln_api.storage.v1 import storage_pb2 as pb
from kiln_api.storage.v1 import storage_pb2_grpc as pb_grpc
from kiln_common.events import NoEvents
from kiln_common.ids import new_id
from kiln_storage.core import StorageCore
from kiln_storage.index import ALL_PREFIX, READY_KEY, label_prefix, marker_keys

pytestmark = pytest.mark.integration


@pytest.fixture(params=["fs", "s3"])
def backend(request: pytest.FixtureRequest) -> dict[str, Any]:
    """Settings of the storage service for each backend (S3: a real SeaweedFS)."""
    if request.param == "fs":
        return {}
    return s3_settings(request.getfixturevalue("seaweed"), request.getfixturevalue("bucket"))


_CROCKFORD = "0123456789abcdefghjkmnpqrstvwxyz"


def id_made_at(when: datetime) -> str:
    """A well-formed id whose time part is `when`."""
    ms = int(when.timestamp() * 1000)
    head = "".join(_CROCKFORD[(ms >> (5 * i)) & 31] for i in reversed(range(10)))
    return head + new_id()[10:]


async def one_chunk(data: bytes, labels: dict[str, str]) -> AsyncIterator[pb.UploadRequest]:
    yield pb.UploadRequest(header=pb.UploadHeader(labels=labels))
    yield pb.UploadRequest(chunk=data)


async def upload(stub: pb_grpc.StorageStub, labels: dict[str, str], data: bytes) -> str:
    artifact = await stub.Upload(one_chunk(data, labels))
    return str(artifact.id)


async def list_all(
    stub: pb_grpc.StorageStub, selector: dict[str, str], page_size: int
) -> tuple[list[str], int]:
    """Every id the selector matches, following tokens; and how many calls it took."""
    ids: list[str] = []
    token = ""
    calls = 0
    while True:
        calls += 1
        reply = await stub.ListArtifacts(
            pb.ListArtifactsRequest(label_selector=selector, page_size=page_size, page_token=token)
        )
        ids += [a.id for a in reply.artifacts]
        assert len(reply.artifacts) <= page_size
        token = reply.next_page_token
        if not token:
            return ids, calls


async def _status(call: Any) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return caught.value


async def test_selectors_page_in_id_order_across_deletes(storage_service, backend) -> None:  # type: ignore[no-untyped-def]
    async with storage_service(**backend) as (app, address), storage_stub(address) as stub:
        await app.core.rebuild_index()  # the service started it; this waits for it
        made: list[tuple[str, dict[str, str]]] = []
        for i in range(12):
            labels = {"name": "a" if i % 3 else "b", "version": str(i % 2), "path": f"x/{i}"}
            # Some share bytes: deduplication must not disturb the index.
            made.append((await upload(stub, labels, b"same" if i % 4 == 0 else b"%d" % i), labels))
        ids = [i for i, _ in made]
        assert ids == sorted(ids), "ids are time-ordered"

        def expected(selector: dict[str, str]) -> list[str]:
            return [i for i, labels in made if all(labels[k] == v for k, v in selector.items())]

        for selector in ({}, {"name": "a"}, {"name": "a", "version": "1"}, {"path": "x/7"}):
            for page_size in (1, 2, 5, 100):
                assert (await list_all(stub, selector, page_size))[0] == expected(selector)

        # Read one page, delete artifacts on it and on the next, then go on.
        first = await stub.ListArtifacts(
            pb.ListArtifactsRequest(label_selector={"name": "a"}, page_size=3)
        )
        gone = {first.artifacts[1].id, *expected({"name": "a"})[3:5]}
        for artifact_id in gone:
            await stub.DeleteArtifact(pb.DeleteArtifactRequest(id=artifact_id))
        labels_of = dict(made)
        made = [(i, labels) for i, labels in made if i not in gone]
        rest, _ = await list_all_from(stub, {"name": "a"}, 3, first.next_page_token)
        assert rest == [i for i in expected({"name": "a"}) if i > first.artifacts[2].id]
        for selector in ({}, {"name": "a"}, {"version": "0"}):
            assert (await list_all(stub, selector, 2))[0] == expected(selector)

        # Deleting removes every marker of the artifact.
        store = app.core.store
        for artifact_id in gone:
            for key in marker_keys(artifact_id, labels_of[artifact_id]):
                assert await store.size(key) is None


async def list_all_from(
    stub: pb_grpc.StorageStub, selector: dict[str, str], page_size: int, token: str
) -> tuple[list[str], int]:
    ids: list[str] = []
    calls = 0
    while token:
        calls += 1
        reply = await stub.ListArtifacts(
            pb.ListArtifactsRequest(label_selector=selector, page_size=page_size, page_token=token)
        )
        ids += [a.id for a in reply.artifacts]
        token = reply.next_page_token
    return ids, calls


async def test_stale_markers_are_skipped_and_old_ones_removed(storage_service, backend) -> None:  # type: ignore[no-untyped-def]
    async with storage_service(**backend) as (app, address), storage_stub(address) as stub:
        await app.core.rebuild_index()
        store = app.core.store
        real = [await upload(stub, {"name": "s"}, b"%d" % i) for i in range(3)]
        # A marker of a commit in flight (young) and one left by a crash (old),
        # placed among the real ones, in both indexes.
        young = new_id()
        old = id_made_at(datetime.now(UTC) - timedelta(hours=2))
        for artifact_id in (young, old):
            for key in marker_keys(artifact_id, {"name": "s"}):
                await store.put(key, b"")

        for selector in ({}, {"name": "s"}):
            ids, _ = await list_all(stub, selector, 2)
            assert ids == real, "markers without records are never listed"
            # Skipping them does not shorten a page.
            page = await stub.ListArtifacts(
                pb.ListArtifactsRequest(label_selector=selector, page_size=3)
            )
            assert [a.id for a in page.artifacts] == real

        for key in marker_keys(young, {"name": "s"}):
            assert await store.size(key) == 0, "a young marker may be an upload committing"
        for key in marker_keys(old, {"name": "s"}):
            assert await store.size(key) is None, "an old marker is removed as it is met"


async def test_a_store_written_without_an_index_lists_before_and_after_the_rebuild(  # type: ignore[no-untyped-def]
    storage_service, backend
) -> None:
    async with storage_service(**backend) as (app, address), storage_stub(address) as stub:
        await app.core.rebuild_index()
        made = {await upload(stub, {"name": "old", "n": str(i)}, b"%d" % i): i for i in range(7)}
        store = app.core.store
        # Make it a store of the previous version: records and no index at all.
        for artifact_id, i in made.items():
            for key in marker_keys(artifact_id, {"name": "old", "n": str(i)}):
                await store.delete(key)
        await store.delete(READY_KEY)
        assert await store.list_keys(ALL_PREFIX) == []

        # A replica started on it lists every record (by reading them all)...
        fresh = StorageCore(store, NoEvents())
        assert not await fresh.index.ready()
        page, token = await fresh.list_artifacts({"name": "old"}, page_size=4)
        assert [a.id for a in page] == sorted(made)[:4]
        rest, _ = await fresh.list_artifacts({"name": "old"}, page_size=4, page_token=token)
        assert [a.id for a in rest] == sorted(made)[4:]

        # ...until the rebuild, which indexes each record once and marks the index ready.
        assert await fresh.rebuild_index() == 7
        assert await fresh.index.ready()
        assert await fresh.rebuild_index() == 0, "done once"
        assert await fresh.rebuild_index(force=True) == 7, "idempotent when forced"
        assert await store.list_keys(ALL_PREFIX) == [ALL_PREFIX + i for i in sorted(made)]
        assert await store.list_keys(label_prefix("n", "3")) == [
            label_prefix("n", "3") + i for i, n in made.items() if n == 3
        ]
        page, _ = await fresh.list_artifacts({"n": "3"}, page_size=10)
        assert [(a.id, a.labels["n"]) for a in page] == [
            (i, "3") for i, n in made.items() if n == 3
        ]
        ids, _ = await list_all(stub, {"name": "old"}, 3)
        assert ids == sorted(made)


async def test_bad_page_tokens_and_sizes_are_invalid_argument(storage_service, backend) -> None:  # type: ignore[no-untyped-def]
    async with storage_service(**backend) as (app, address), storage_stub(address) as stub:
        await app.core.rebuild_index()
        ids = [await upload(stub, {"name": "t"}, b"%d" % i) for i in range(3)]
        for token in (
            "garbage",
            "../../etc/passwd",
            ids[0].upper(),  # ids are lower case
            ids[0] + "0",
            "index/all/" + ids[0],
            "01m8\u00e9xd1f8vz217x3gpcw23fy",
        ):
            err = await _status(stub.ListArtifacts(pb.ListArtifactsRequest(page_token=token)))
            assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, token
            assert "page_token" in (err.details() or "")

        err = await _status(stub.ListArtifacts(pb.ListArtifactsRequest(page_size=1001)))
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "page_size: must be 1..1000, got 1001" in (err.details() or "")
        big = await stub.ListArtifacts(pb.ListArtifactsRequest(page_size=1000))
        assert [a.id for a in big.artifacts] == ids and big.next_page_token == ""

        # A well-formed token is a position, whether or not that artifact still exists.
        await stub.DeleteArtifact(pb.DeleteArtifactRequest(id=ids[1]))
        after = await stub.ListArtifacts(pb.ListArtifactsRequest(page_token=ids[1]))
        assert [a.id for a in after.artifacts] == [ids[2]]

        err = await _status(
            stub.ListArtifacts(pb.ListArtifactsRequest(label_selector={"Bad Key": "x"}))
        )
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "label_selector" in (err.details() or "")


async def test_an_artifact_deleted_by_another_replica_leaves_this_ones_listing(  # type: ignore[no-untyped-def]
    storage_service, backend
) -> None:
    """Each replica caches the records it has listed; the listing of markers,
    not that cache, decides what exists."""
    async with storage_service(**backend) as (app, address), storage_stub(address) as stub:
        await app.core.rebuild_index()
        ids = [await upload(stub, {"name": "c"}, b"%d" % i) for i in range(4)]
        assert (await list_all(stub, {"name": "c"}, 10))[0] == ids  # now cached here
        other = StorageCore(app.core.store, NoEvents())
        await other.delete(ids[1])
        assert (await list_all(stub, {"name": "c"}, 10))[0] == [ids[0], *ids[2:]]
        assert (await list_all(stub, {}, 2))[0] == [ids[0], *ids[2:]]
