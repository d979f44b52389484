"""The storage service on the S3 backend, against a real SeaweedFS with
signature checks on."""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from support import payload, s3_client, s3_settings, storage_stub

from kiln_api.storage.v1 import storage_pb2 as pb
from kiln_client import AsyncStorageClient
from kiln_common.proc import run, stop_pid
from kiln_common.retry import RetryPolicy
from kiln_devstack.devservers import Seaweed, free_port, start_seaweed, stopping

pytestmark = pytest.mark.integration

CHUNK = 1 << 20
PART = 5 * CHUNK


async def upload_requests(data: bytes, labels: dict[str, str]) -> AsyncIterator[pb.UploadRequest]:
    yield pb.UploadRequest(header=pb.UploadHeader(labels=labels, size=len(data)))
    for i in range(0, len(data), CHUNK):
        yield pb.UploadRequest(chunk=data[i : i + CHUNK])


def objects(server: Seaweed, bucket: str) -> list[str]:
    """Every key in the bucket but the index's ready note, which the service
    writes at start and keeps."""
    return sorted(
        o.object_name or ""
        for o in s3_client(server).list_objects(bucket, recursive=True)
        if o.object_name != "index/ready"
    )


async def test_upload_dedup_range_and_presigned_urls(  # type: ignore[no-untyped-def]
    storage_service, seaweed: Seaweed, bucket: str, tmp_path: Path
) -> None:
    data = payload(3 * PART + 4321, seed=31)
    settings = s3_settings(seaweed, bucket, part_size=PART)
    async with storage_service(**settings) as (_, address), storage_stub(address) as stub:
        first = await stub.Upload(upload_requests(data, {"name": "img", "format": "raw"}))
        second = await stub.Upload(upload_requests(data, {"name": "copy"}))
        for alg in ("sha256", "sha512", "sha1", "md5"):
            assert getattr(first.checksums, alg) == hashlib.new(alg, data).hexdigest()
        blobs = [k for k in objects(seaweed, bucket) if k.startswith("blobs/")]
        assert len(blobs) == 1, "the same bytes must be stored once"

        got = b"".join(
            [
                c.data
                async for c in stub.Download(
                    pb.DownloadRequest(id=second.id, offset=PART - 3, length=10)
                )
            ]
        )
        assert got == data[PART - 3 : PART + 7]

        url = (await stub.GetDownloadUrl(pb.GetDownloadUrlRequest(id=first.id))).url
        assert url.startswith(f"http://{seaweed.endpoint}/{bucket}/blobs/")
        out = tmp_path / "head"
        curl = ["curl", "-sS", "-r", "0-1023", "-o", out, "-w", "%{http_code}"]
        assert (await run([*curl, url])).stdout == "206"
        assert out.read_bytes() == data[:1024]
        tampered = url.replace("X-Amz-Signature=", "X-Amz-Signature=0")
        assert (await run([*curl, tampered])).stdout == "403"

        await stub.DeleteArtifact(pb.DeleteArtifactRequest(id=first.id))
        assert len([k for k in objects(seaweed, bucket) if k.startswith("blobs/")]) == 1
        await stub.DeleteArtifact(pb.DeleteArtifactRequest(id=second.id))
        assert objects(seaweed, bucket) == []


async def test_uploads_resume_on_another_replica_and_abort_cleans_parts(  # type: ignore[no-untyped-def]
    storage_service, seaweed: Seaweed, bucket: str
) -> None:
    data = payload(2 * PART + 10, seed=32)
    settings = s3_settings(seaweed, bucket, part_size=PART)

    async def part(upload_id: str, n: int) -> AsyncIterator[pb.UploadPartRequest]:
        yield pb.UploadPartRequest(header=pb.PartHeader(upload_id=upload_id, number=n))
        yield pb.UploadPartRequest(chunk=data[(n - 1) * PART : n * PART])

    async with storage_service(**settings) as (_, address), storage_stub(address) as stub:
        session = await stub.CreateUpload(pb.CreateUploadRequest(labels={"name": "r"}))
        await stub.UploadPart(part(session.upload_id, 1))
        abandoned = await stub.CreateUpload(pb.CreateUploadRequest(labels={"name": "gone"}))
        await stub.UploadPart(part(abandoned.upload_id, 1))
    # That replica is gone; another one carries on from what S3 holds.
    async with storage_service(**settings) as (_, address), storage_stub(address) as stub:
        state = await stub.GetUpload(pb.GetUploadRequest(upload_id=session.upload_id))
        assert [(p.number, p.size) for p in state.parts] == [(1, PART)]
        await stub.UploadPart(part(session.upload_id, 2))
        await stub.UploadPart(part(session.upload_id, 3))
        artifact = await stub.CompleteUpload(pb.CompleteUploadRequest(upload_id=session.upload_id))
        assert artifact.checksums.sha256 == hashlib.sha256(data).hexdigest()
        assert artifact.size == len(data)

        await stub.AbortUpload(pb.AbortUploadRequest(upload_id=abandoned.upload_id))
        pending = s3_client(seaweed)._list_multipart_uploads(bucket)
        assert list(pending.uploads) == []
        assert [k for k in objects(seaweed, bucket) if k.startswith("uploads/")] == []
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.GetUpload(pb.GetUploadRequest(upload_id=abandoned.upload_id))
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND


async def test_janitor_aborts_expired_uploads_in_s3(  # type: ignore[no-untyped-def]
    storage_service, seaweed: Seaweed, bucket: str
) -> None:
    settings = s3_settings(seaweed, bucket, upload_ttl_seconds=1)
    async with storage_service(**settings) as (app, address), storage_stub(address) as stub:
        await stub.CreateUpload(pb.CreateUploadRequest(labels={"name": "left"}))
        await asyncio.sleep(1.5)
        assert await app.core.sweep() == 1
        assert list(s3_client(seaweed)._list_multipart_uploads(bucket).uploads) == []
        assert objects(seaweed, bucket) == []


async def test_unreachable_s3_is_unavailable_after_bounded_retries(  # type: ignore[no-untyped-def]
    storage_service, tmp_path: Path, bucket: str
) -> None:
    own = start_seaweed(tmp_path / "weed", tmp_path / "weed.log", "kilnown", "ownsecret1234")
    with stopping(own.pid):
        settings = s3_settings(own, bucket, s3_retries=2, s3_timeout=1.0)
        async with storage_service(**settings) as (_, address), storage_stub(address) as stub:
            artifact = await stub.Upload(upload_requests(b"before the outage", {"name": "x"}))
            stop_pid(own.pid)
            started = time.monotonic()
            for call in (
                stub.StatArtifact(pb.StatArtifactRequest(id=artifact.id)),
                stub.Upload(upload_requests(b"during the outage", {"name": "y"})),
            ):
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    await call
                assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
                assert "S3 endpoint unreachable" in (caught.value.details() or "")
            assert time.monotonic() - started < 30


async def test_client_downloads_from_the_presigned_url_and_falls_back_to_the_stream(  # type: ignore[no-untyped-def]
    storage_service, seaweed: Seaweed, bucket: str, tmp_path: Path, caplog
) -> None:
    data = payload(PART + 5, seed=33)
    source = tmp_path / "source.bin"
    source.write_bytes(data)
    dead_endpoint = f"127.0.0.1:{free_port()}"  # presigned URLs that lead nowhere
    for public, name in ((None, "direct"), (dead_endpoint, "fallback")):
        extra = {"s3_public_endpoint": public} if public else {}
        settings = s3_settings(seaweed, bucket, part_size=PART, **extra)
        policy = RetryPolicy(attempts=2)
        async with (
            storage_service(**settings) as (_, address),
            AsyncStorageClient(address, policy=policy) as client,
        ):
            artifact = await client.push(source, {"name": name})
            dest = tmp_path / f"{name}.bin"
            # Half of it is here already: the rest is fetched with a Range request.
            (tmp_path / f"{name}.bin.part").write_bytes(data[: PART // 2])
            caplog.clear()
            await client.get(artifact.id, dest)
            assert dest.read_bytes() == data
            fell_back = "streaming through the service" in caplog.text
            assert fell_back == (name == "fallback")
