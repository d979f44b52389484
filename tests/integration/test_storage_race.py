"""A delete racing an upload of the very same bytes, on both backends (the
filesystem and a real SeaweedFS). The core's checkpoint hook pauses one
request at a chosen point while the other runs, so each interleaving happens
every time; in each, the uploaded artifact must stay readable."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import AsyncIterator
from typing import Any

import pytest
from support import payload, s3_settings, storage_stub

from kiln_api.storage.v1 import storage_pb2 as pb
from kiln_api.storage.v1 import storage_pb2_grpc as pb_grpc
from kiln_storage.app import StorageApp

pytestmark = pytest.mark.integration

DATA = payload(100_000, seed=77)
WAIT = 30.0  # seconds; a paused request that never resumes fails the test, not the run


@pytest.fixture(params=["fs", "s3"])
def backend(request: pytest.FixtureRequest) -> dict[str, Any]:
    """Settings of the storage service for each backend (S3: a real SeaweedFS)."""
    if request.param == "fs":
        return {}
    return s3_settings(request.getfixturevalue("seaweed"), request.getfixturevalue("bucket"))


class Gates:
    """The core's checkpoint: records each point reached, and holds a request
    at a closed gate until the test opens it."""

    def __init__(self) -> None:
        self.reached: defaultdict[str, asyncio.Event] = defaultdict(asyncio.Event)
        self.closed: dict[str, asyncio.Event] = {}

    def close(self, point: str) -> None:
        self.closed[point] = asyncio.Event()

    def open(self, point: str) -> None:
        self.closed.pop(point).set()

    async def wait(self, point: str) -> None:
        await asyncio.wait_for(self.reached[point].wait(), WAIT)

    async def __call__(self, point: str) -> None:
        self.reached[point].set()
        gate = self.closed.get(point)
        if gate is not None:
            await asyncio.wait_for(gate.wait(), WAIT)


async def requests(labels: dict[str, str]) -> AsyncIterator[pb.UploadRequest]:
    yield pb.UploadRequest(header=pb.UploadHeader(labels=labels))
    yield pb.UploadRequest(chunk=DATA)


async def read_back(stub: pb_grpc.StorageStub, artifact_id: str) -> bytes:
    chunks = stub.Download(pb.DownloadRequest(id=artifact_id))
    return b"".join([c.data async for c in chunks])


async def blobs(app: StorageApp) -> list[str]:
    return await app.core.store.list_keys("blobs/")


async def test_delete_decided_first_then_the_upload_keeps_its_own_copy(  # type: ignore[no-untyped-def]
    storage_service, backend
) -> None:
    """The interleaving of the old known limit: the delete has found no other
    ref and is about to remove the blob when the upload commits. The delete
    unmapped the content before it looked, so the upload keeps its copy."""
    async with storage_service(**backend) as (app, address), storage_stub(address) as stub:
        gates = Gates()
        app.core.checkpoint = gates
        old = await stub.Upload(requests({"name": "old"}))
        gates.close("delete.blob")
        deleting = asyncio.ensure_future(stub.DeleteArtifact(pb.DeleteArtifactRequest(id=old.id)))
        await gates.wait("delete.blob")
        new = await asyncio.wait_for(stub.Upload(requests({"name": "new"})), WAIT)
        gates.open("delete.blob")
        await asyncio.wait_for(deleting, WAIT)
        assert await read_back(stub, new.id) == DATA
        assert len(await blobs(app)) == 1
        await stub.DeleteArtifact(pb.DeleteArtifactRequest(id=new.id))
        assert await blobs(app) == []


async def test_upload_decided_to_share_first_then_the_delete_keeps_the_blob(  # type: ignore[no-untyped-def]
    storage_service, backend
) -> None:
    """The upload found the blob and is about to drop its own copy when the
    delete runs: the delete sees the upload's ref, waits for its record, and
    keeps the blob the upload now uses."""
    async with storage_service(**backend) as (app, address), storage_stub(address) as stub:
        gates = Gates()
        app.core.checkpoint = gates
        old = await stub.Upload(requests({"name": "old"}))
        gates.close("commit.sharing")
        uploading = asyncio.ensure_future(stub.Upload(requests({"name": "new"})))
        await gates.wait("commit.sharing")
        deleting = asyncio.ensure_future(stub.DeleteArtifact(pb.DeleteArtifactRequest(id=old.id)))
        await gates.wait("delete.unmapped")
        await asyncio.sleep(0.2)  # the delete is now waiting for the upload's record
        assert not deleting.done()
        gates.open("commit.sharing")
        new = await asyncio.wait_for(uploading, WAIT)
        await asyncio.wait_for(deleting, WAIT)
        assert not gates.reached["delete.blob"].is_set()
        assert await read_back(stub, new.id) == DATA
        assert len(await blobs(app)) == 1
        await stub.DeleteArtifact(pb.DeleteArtifactRequest(id=new.id))
        assert await blobs(app) == []


async def test_upload_referenced_then_the_delete_unmaps_and_waits(  # type: ignore[no-untyped-def]
    storage_service, backend
) -> None:
    """The upload wrote its ref but has not read the content mapping when the
    delete removes the mapping: the upload then keeps its own copy, and the
    delete, having waited for its record, removes the old blob."""
    async with storage_service(**backend) as (app, address), storage_stub(address) as stub:
        gates = Gates()
        app.core.checkpoint = gates
        old = await stub.Upload(requests({"name": "old"}))
        (old_blob,) = await blobs(app)
        gates.close("commit.referenced")
        uploading = asyncio.ensure_future(stub.Upload(requests({"name": "new"})))
        await gates.wait("commit.referenced")
        deleting = asyncio.ensure_future(stub.DeleteArtifact(pb.DeleteArtifactRequest(id=old.id)))
        await gates.wait("delete.unmapped")
        gates.open("commit.referenced")
        new = await asyncio.wait_for(uploading, WAIT)
        await asyncio.wait_for(deleting, WAIT)
        assert not gates.reached["commit.sharing"].is_set()
        assert await read_back(stub, new.id) == DATA
        remaining = await blobs(app)
        assert len(remaining) == 1 and remaining != [old_blob]
        await stub.DeleteArtifact(pb.DeleteArtifactRequest(id=new.id))
        assert await blobs(app) == []
