"""The gRPC layer: converts messages and calls the core, nothing more."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import grpc

from kiln_api.storage.v1 import storage_pb2 as pb
from kiln_api.storage.v1 import storage_pb2_grpc as pb_grpc
from kiln_common.errors import InvalidArgument
from kiln_common.grpc_errors import servicer
from kiln_storage.core import StorageCore
from kiln_storage.model import Artifact, Checksums, Part, UploadSession

Context = grpc.aio.ServicerContext[Any, Any]


def checksums_from(msg: pb.Checksums) -> Checksums:
    return Checksums(sha256=msg.sha256, sha512=msg.sha512, sha1=msg.sha1, md5=msg.md5)


def artifact_to(a: Artifact) -> pb.Artifact:
    msg = pb.Artifact(
        id=a.id,
        size=a.size,
        checksums=pb.Checksums(**a.checksums.given()),
        labels=a.labels,
        tenant=a.tenant,
    )
    msg.created_at.FromDatetime(a.created_at)
    return msg


def part_to(p: Part) -> pb.Part:
    return pb.Part(number=p.number, size=p.size, sha256=p.sha256)


def session_to(s: UploadSession) -> pb.UploadSession:
    msg = pb.UploadSession(
        upload_id=s.upload_id,
        part_size=s.part_size,
        parts=[part_to(p) for p in s.parts],
        labels=s.labels,
        size=s.size,
    )
    msg.created_at.FromDatetime(s.created_at)
    return msg


async def _split(
    requests: AsyncIterator[Any], header_type: str
) -> tuple[Any, AsyncIterator[bytes]]:
    """The first message must be the header; the rest carry chunks."""
    first = await anext(aiter(requests), None)
    if first is None or first.WhichOneof("msg") != "header":
        raise InvalidArgument(f"the first message must carry the {header_type}")

    async def chunks() -> AsyncIterator[bytes]:
        async for req in requests:
            if req.WhichOneof("msg") != "chunk":
                raise InvalidArgument(f"only the first message may carry the {header_type}")
            yield req.chunk

    return first.header, chunks()


@servicer
class StorageServicer(pb_grpc.StorageServicer):
    def __init__(self, core: StorageCore) -> None:
        self.core = core

    async def Upload(
        self, request_iterator: AsyncIterator[pb.UploadRequest], context: Context
    ) -> pb.Artifact:
        header, chunks = await _split(request_iterator, "upload header")
        size = header.size if header.HasField("size") else None
        artifact = await self.core.upload(
            dict(header.labels), checksums_from(header.expected), size, chunks
        )
        return artifact_to(artifact)

    async def CreateUpload(
        self, request: pb.CreateUploadRequest, context: Context
    ) -> pb.UploadSession:
        size = request.size if request.HasField("size") else None
        session = await self.core.create_upload(
            dict(request.labels), checksums_from(request.expected), size, request.part_size
        )
        return session_to(session)

    async def UploadPart(
        self, request_iterator: AsyncIterator[pb.UploadPartRequest], context: Context
    ) -> pb.Part:
        header, chunks = await _split(request_iterator, "part header")
        part = await self.core.put_part(header.upload_id, header.number, chunks, header.sha256)
        return part_to(part)

    async def GetUpload(self, request: pb.GetUploadRequest, context: Context) -> pb.UploadSession:
        return session_to(await self.core.get_upload(request.upload_id))

    async def CompleteUpload(
        self, request: pb.CompleteUploadRequest, context: Context
    ) -> pb.Artifact:
        return artifact_to(await self.core.complete_upload(request.upload_id))

    async def AbortUpload(
        self, request: pb.AbortUploadRequest, context: Context
    ) -> pb.AbortUploadResponse:
        await self.core.abort_upload(request.upload_id)
        return pb.AbortUploadResponse()

    async def StatArtifact(self, request: pb.StatArtifactRequest, context: Context) -> pb.Artifact:
        return artifact_to(await self.core.stat(request.id))

    async def ListArtifacts(
        self, request: pb.ListArtifactsRequest, context: Context
    ) -> pb.ListArtifactsResponse:
        found, token = await self.core.list_artifacts(
            dict(request.label_selector), request.page_size, request.page_token
        )
        return pb.ListArtifactsResponse(
            artifacts=[artifact_to(a) for a in found], next_page_token=token
        )

    async def DeleteArtifact(
        self, request: pb.DeleteArtifactRequest, context: Context
    ) -> pb.DeleteArtifactResponse:
        await self.core.delete(request.id)
        return pb.DeleteArtifactResponse()

    async def Download(
        self, request: pb.DownloadRequest, context: Context
    ) -> AsyncIterator[pb.DownloadChunk]:
        _, chunks = await self.core.read(request.id, request.offset, request.length)
        async for data in chunks:
            yield pb.DownloadChunk(data=data)

    async def GetDownloadUrl(
        self, request: pb.GetDownloadUrlRequest, context: Context
    ) -> pb.DownloadUrl:
        try:
            expires = request.expires_in.ToTimedelta() if request.HasField("expires_in") else None
        except OverflowError:  # more days than a timedelta holds
            raise InvalidArgument("expires_in: out of range") from None
        if expires == timedelta(0):
            expires = None
        url, expires_at = await self.core.download_url(request.id, expires)
        msg = pb.DownloadUrl(url=url)
        msg.expires_at.FromDatetime(expires_at)
        return msg
