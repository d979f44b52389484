"""The storage service over gRPC, filesystem backend, publishing events to a
real nats-server."""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import AsyncIterator, Iterable

import grpc
import nats
import pytest
from support import payload, storage_stub

from kiln_api.storage.v1 import storage_pb2 as pb
from kiln_client.storage import AsyncStorageClient
from kiln_client.transfer import StopFlag, UploadPlan, state_file
from kiln_common.events import STREAM, from_json
from kiln_devstack.devservers import Nats

pytestmark = pytest.mark.integration

CHUNK = 1 << 20


async def upload_requests(
    data: bytes, labels: dict[str, str], expected: pb.Checksums | None = None
) -> AsyncIterator[pb.UploadRequest]:
    yield pb.UploadRequest(header=pb.UploadHeader(labels=labels, expected=expected))
    for i in range(0, len(data), CHUNK):
        yield pb.UploadRequest(chunk=data[i : i + CHUNK])


async def requests_of(items: Iterable[pb.UploadRequest]) -> AsyncIterator[pb.UploadRequest]:
    for item in items:
        yield item


async def test_upload_download_and_events_on_nats(storage_service, nats_server: Nats) -> None:  # type: ignore[no-untyped-def]
    nc = await nats.connect(nats_server.url)
    try:
        async with (
            storage_service(nats_url=nats_server.url) as (_, address),
            storage_stub(address) as stub,
        ):
            data = payload(20 * CHUNK + 17)
            artifact = await stub.Upload(upload_requests(data, {"name": "demo"}))
            assert artifact.checksums.sha512 == hashlib.sha512(data).hexdigest()
            got = b"".join(
                [
                    c.data
                    async for c in stub.Download(
                        pb.DownloadRequest(id=artifact.id, offset=5, length=3 * CHUNK)
                    )
                ]
            )
            assert got == data[5 : 5 + 3 * CHUNK]
            await stub.DeleteArtifact(pb.DeleteArtifactRequest(id=artifact.id))

        js = nc.jetstream()
        sub = await js.subscribe("kiln.events.>", stream=STREAM, ordered_consumer=True)
        events = [from_json((await sub.next_msg(timeout=5)).data) for _ in range(2)]
        assert [e.type for e in events] == ["artifact.stored", "artifact.deleted"]
        stored = events[0]
        assert stored.specversion == "1.0" and stored.subject == artifact.id
        assert stored.source.startswith("kiln-storage/")
        assert stored.datacontenttype == "application/json"
        assert stored.id and stored.time.seconds > 0
        assert stored.data["checksums"]["sha256"] == hashlib.sha256(data).hexdigest()
        assert stored.data["labels"] == {"name": "demo"}
        assert "blob" not in stored.data  # internal keys stay internal
        raw = json.loads((await js.get_last_msg(STREAM, "kiln.events.artifact.deleted")).data)
        assert raw["type"] == "artifact.deleted" and raw["subject"] == artifact.id
    finally:
        await nc.close()


async def _status(call: object) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call  # type: ignore[misc]
    return caught.value


async def test_bad_input_gets_a_clear_status_and_loses_nothing(storage_service, tmp_path) -> None:  # type: ignore[no-untyped-def]
    async with storage_service() as (app, address), storage_stub(address) as stub:
        kept = await stub.Upload(upload_requests(b"keep me", {"name": "kept"}))

        err = await _status(stub.Upload(upload_requests(b"", {"name": "empty"})))
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "empty upload" in (err.details() or "")

        wrong = pb.Checksums(sha256=hashlib.sha256(b"something else").hexdigest())
        err = await _status(stub.Upload(upload_requests(b"data", {}, wrong)))
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "checksum mismatch" in (err.details() or "")

        err = await _status(
            stub.StatArtifact(pb.StatArtifactRequest(id="01m81xd1f8vz217x3gpcw23fyb"))
        )
        assert err.code() == grpc.StatusCode.NOT_FOUND

        err = await _status(stub.Upload(upload_requests(b"x", {"Bad Key": "v"})))
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "labels: key" in (
            err.details() or ""
        )

        err = await _status(stub.Upload(upload_requests(b"x", {"name": "n" * 500})))
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "labels.name" in (
            err.details() or ""
        )

        err = await _status(stub.Upload(requests_of([pb.UploadRequest(chunk=b"no header")])))
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "first message" in (
            err.details() or ""
        )

        err = await _status(stub.GetDownloadUrl(pb.GetDownloadUrlRequest(id="../../etc/passwd")))
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT

        listed = await stub.ListArtifacts(pb.ListArtifactsRequest())
        assert [a.id for a in listed.artifacts] == [kept.id]
        root = app.settings.fs_root / "objects"
        assert sorted(p.name for p in (root / "blobs").iterdir()) == [
            kept.id and _blob_of(app, kept.id)
        ]
        assert not (root / "uploads").exists() or not any((root / "uploads").iterdir())


def _blob_of(app, artifact_id: str) -> str:  # type: ignore[no-untyped-def]
    record = json.loads(
        (app.settings.fs_root / "objects/artifacts" / f"{artifact_id}.json").read_text()
    )
    return str(record["blob"]).split("/")[-1]


async def test_a_resumable_upload_survives_a_dropped_part_stream(storage_service) -> None:  # type: ignore[no-untyped-def]
    part = 5 * CHUNK
    data = payload(2 * part + 100, seed=9)
    async with storage_service() as (_, address):
        async with storage_stub(address) as stub:
            session = await stub.CreateUpload(
                pb.CreateUploadRequest(labels={"name": "r"}, part_size=part)
            )

            async def part_stream(n: int, cut: bool = False) -> AsyncIterator[pb.UploadPartRequest]:
                yield pb.UploadPartRequest(
                    header=pb.PartHeader(upload_id=session.upload_id, number=n)
                )
                body = data[(n - 1) * part : n * part]
                for i in range(0, len(body), CHUNK):
                    if cut and i >= 2 * CHUNK:
                        raise ConnectionError("network cable pulled")
                    yield pb.UploadPartRequest(chunk=body[i : i + CHUNK])

            await stub.UploadPart(part_stream(1))
            # The client side of the stream dies mid-part: gRPC cancels the call.
            with pytest.raises((grpc.aio.AioRpcError, asyncio.CancelledError)):
                await stub.UploadPart(part_stream(2, cut=True))
        # A new connection asks which parts are there, and continues.
        async with storage_stub(address) as stub:
            state = await stub.GetUpload(pb.GetUploadRequest(upload_id=session.upload_id))
            assert [(p.number, p.size) for p in state.parts] == [(1, part)]
            await stub.UploadPart(part_stream(2))
            await stub.UploadPart(part_stream(3))
            artifact = await stub.CompleteUpload(
                pb.CompleteUploadRequest(upload_id=session.upload_id)
            )
            assert artifact.checksums.sha256 == hashlib.sha256(data).hexdigest()
            err = await _status(stub.GetUpload(pb.GetUploadRequest(upload_id=session.upload_id)))
            assert err.code() == grpc.StatusCode.NOT_FOUND


class CountingClient(AsyncStorageClient):
    """Records which parts it sends: resuming must send only the missing ones."""

    sent: list[int]

    async def _send_part(
        self, upload_id: str, plan: UploadPlan, number: int, stop: StopFlag | None = None
    ) -> int:
        self.sent.append(number)
        return await super()._send_part(upload_id, plan, number, stop)


async def test_an_interrupted_push_resumes_from_the_parts_the_service_has(  # type: ignore[no-untyped-def]
    storage_service, tmp_path
) -> None:
    part = 5 * CHUNK
    data = payload(3 * part + 1, seed=12)
    source = tmp_path / "image.raw"
    source.write_bytes(data)
    async with storage_service() as (_, address):
        async with CountingClient(address, state_dir=tmp_path / "state") as client:
            client.sent = []
            # The first run stored parts 1 and 3, then died.
            plan = UploadPlan(source, len(data), part)
            session = await client._resume_or_create(
                plan, {"name": "resumed"}, "", state_file(client.state_dir, source, len(data))
            )
            for n in (1, 3):
                await client._send_part(session.upload_id, plan, n)
            client.sent.clear()
            artifact = await client.push(source, {"name": "resumed"}, part_size=part)
        assert sorted(client.sent) == [2, 4]
        assert artifact.checksums.sha256 == hashlib.sha256(data).hexdigest()
        assert list((tmp_path / "state").iterdir()) == []
