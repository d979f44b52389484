"""Clients of the Storage service: AsyncStorageClient (the implementation)
and StorageClient (the same, blocking). Uploads go in parts, several at
once, and resume; downloads resume and are verified against the SHA-256 the
service recorded. Every call is retried by the one retry policy and fails
with the domain error (kiln_common.errors) its status stands for."""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import copy
import json
import logging
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
from google.protobuf.duration_pb2 import Duration

from kiln_api.storage.v1 import storage_pb2 as pb
from kiln_api.storage.v1 import storage_pb2_grpc as pb_grpc
from kiln_client import _rpc, discovery, transfer, wire
from kiln_client._sync import LoopThread
from kiln_client.errors import ClientError, UploadStopped
from kiln_client.transfer import Progress, StopFlag, UploadPlan
from kiln_common.artifacts import Artifact
from kiln_common.errors import Internal, NotFound, Unavailable
from kiln_common.grpc_errors import from_rpc
from kiln_common.grpc_server import CHUNK_SIZE
from kiln_common.retry import RetryPolicy

log = logging.getLogger(__name__)
MAX_PAGE = 500
GRPC_CORE_INTERNAL = "Internal error from Core"


class AsyncStorageClient:
    def __init__(
        self,
        address: str = "",
        *,
        policy: RetryPolicy = _rpc.DEFAULT_POLICY,
        state_dir: Path | None = None,
        token: str = "",  # default: credentials.token()
    ) -> None:
        self.address = discovery.address("storage", address)
        self.policy = policy
        self.state_dir = state_dir  # where interrupted pushes remember their session
        self._channel = _rpc.channel(self.address, token)
        self._stub = pb_grpc.StorageStub(self._channel)

    def with_policy(self, policy: RetryPolicy) -> AsyncStorageClient:
        """This client's channel under another retry policy, for a caller
        that must answer soon (a web page) where others may wait; closing
        either closes the channel."""
        other = copy.copy(self)
        other.policy = policy
        return other

    async def close(self) -> None:
        await self._channel.close(None)

    async def __aenter__(self) -> AsyncStorageClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # ---- records ---------------------------------------------------------------------

    async def stat(self, artifact_id: str) -> Artifact:
        request = pb.StatArtifactRequest(id=artifact_id)
        reply = await _rpc.unary(self.policy, "stat", lambda: self._stub.StatArtifact(request))
        return wire.artifact_of(reply)

    def list(
        self, labels: dict[str, str] | None = None, page_size: int = MAX_PAGE
    ) -> AsyncIterator[Artifact]:
        """Every artifact with these labels, page after page."""

        async def page(token: str) -> tuple[builtins.list[Artifact], str]:
            request = pb.ListArtifactsRequest(
                label_selector=labels or {}, page_size=page_size, page_token=token
            )
            reply = await _rpc.unary(self.policy, "list", lambda: self._stub.ListArtifacts(request))
            return [wire.artifact_of(a) for a in reply.artifacts], reply.next_page_token

        return _rpc.pages(page)

    async def url(self, artifact_id: str, expires_seconds: int = 0) -> str:
        request = pb.GetDownloadUrlRequest(id=artifact_id)
        if expires_seconds:
            request.expires_in.CopyFrom(Duration(seconds=expires_seconds))
        reply = await _rpc.unary(self.policy, "url", lambda: self._stub.GetDownloadUrl(request))
        return str(reply.url)

    async def delete(self, artifact_id: str, *, missing_ok: bool = False) -> bool:
        """True if it was deleted, False if it was already gone (missing_ok)."""
        request = pb.DeleteArtifactRequest(id=artifact_id)
        try:
            await _rpc.unary(self.policy, "delete", lambda: self._stub.DeleteArtifact(request))
        except NotFound:
            if not missing_ok:
                raise
            return False
        return True

    # ---- upload ----------------------------------------------------------------------

    async def _resume_or_create(
        self, plan: UploadPlan, labels: dict[str, str], sha256: str, state: Path | None
    ) -> pb.UploadSession:
        if state is not None and state.exists():
            upload_id = json.loads(state.read_text())["upload_id"]
            request = pb.GetUploadRequest(upload_id=upload_id)
            with contextlib.suppress(NotFound):
                return await _rpc.unary(
                    self.policy, "resume", lambda: self._stub.GetUpload(request)
                )
        create = pb.CreateUploadRequest(
            labels=labels,
            size=plan.size,
            part_size=plan.part_size,
            expected=pb.Checksums(sha256=sha256),
        )
        session = await _rpc.unary(self.policy, "create", lambda: self._stub.CreateUpload(create))
        if state is not None:
            state.parent.mkdir(parents=True, exist_ok=True)
            state.write_text(json.dumps({"upload_id": session.upload_id}))
        return session

    async def _send_part(
        self, upload_id: str, plan: UploadPlan, number: int, stop: StopFlag | None
    ) -> int:
        offset, length = plan.part(number)

        async def requests() -> AsyncIterator[pb.UploadPartRequest]:
            yield pb.UploadPartRequest(header=pb.PartHeader(upload_id=upload_id, number=number))
            sent = 0
            while sent < length:
                if stop is not None and stop.is_set():
                    raise UploadStopped(f"upload of {plan.path} stopped")
                want = min(CHUNK_SIZE, length - sent)
                data = await asyncio.to_thread(transfer.read_part, plan.path, offset + sent, want)
                if len(data) != want:
                    raise ClientError(f"{plan.path} shrank while it was uploaded")
                sent += want
                yield pb.UploadPartRequest(chunk=data)

        async def send() -> None:
            try:
                await _rpc.mapped(lambda: self._stub.UploadPart(requests()))
            except Internal as exc:
                # grpc.aio reports a client-streaming call that the server ended
                # early (it aborted with UNAVAILABLE while parts were still being
                # written) as INTERNAL "Internal error from Core" instead of the
                # server's status (grpc/grpc#36066). A part is safe to send again.
                if str(exc) != GRPC_CORE_INTERNAL:
                    raise
                raise Unavailable(f"part {number} was cut off by the service") from exc

        await self.policy.acall(send, f"part {number}")
        return length

    async def push(
        self,
        path: Path,
        labels: dict[str, str],
        *,
        part_size: int = 16 * 1024 * 1024,
        concurrency: int = 4,
        sha256: str = "",
        progress: Progress | None = None,
        stop: StopFlag | None = None,
    ) -> Artifact:
        """Uploads path in parts, several at once. A part that fails on a
        dropped connection is sent again; a push interrupted entirely resumes
        from the parts the service has when run again (state in state_dir).
        Setting stop aborts the upload: its parts are removed."""
        size = path.stat().st_size
        if size == 0:
            raise ClientError(f"{path} is empty: there is nothing to store")
        plan = UploadPlan(path, size, part_size)
        state = transfer.state_file(self.state_dir, path, size)
        session = await self._resume_or_create(plan, labels, sha256, state)
        have = {p.number for p in session.parts if p.size == plan.part(p.number)[1]}
        if progress:
            progress(sum(plan.part(n)[1] for n in have))
        todo = [n for n in range(1, plan.count + 1) if n not in have]
        try:
            await self._send_parts(session.upload_id, plan, todo, concurrency, progress, stop)
        except BaseException:
            if stop is not None and stop.is_set():
                await asyncio.shield(self._abort(session.upload_id, state))
                raise UploadStopped(f"upload of {path} stopped and aborted") from None
            raise
        complete = pb.CompleteUploadRequest(upload_id=session.upload_id)
        try:
            done = await _rpc.unary(
                self.policy, "complete", lambda: self._stub.CompleteUpload(complete)
            )
            return wire.artifact_of(done)
        finally:
            if state is not None:
                state.unlink(missing_ok=True)

    async def _abort(self, upload_id: str, state: Path | None) -> None:
        request = pb.AbortUploadRequest(upload_id=upload_id)
        with contextlib.suppress(NotFound):
            await _rpc.unary(self.policy, "abort", lambda: self._stub.AbortUpload(request))
        if state is not None:
            state.unlink(missing_ok=True)

    async def _send_parts(
        self,
        upload_id: str,
        plan: UploadPlan,
        todo: builtins.list[int],
        concurrency: int,
        progress: Progress | None,
        stop: StopFlag | None,
    ) -> None:
        slots = asyncio.Semaphore(concurrency)

        async def one(number: int) -> None:
            async with slots:
                sent = await self._send_part(upload_id, plan, number, stop)
            if progress:
                progress(sent)

        # A TaskGroup cancels the other parts as soon as one fails; the
        # caller sees that first failure, not a group of them.
        try:
            async with asyncio.TaskGroup() as group:
                for number in todo:
                    group.create_task(one(number))
        except BaseExceptionGroup as group_error:
            raise group_error.exceptions[0] from None

    # ---- download --------------------------------------------------------------------

    async def get(
        self,
        artifact_id: str,
        dest: Path,
        progress: Progress | None = None,
        *,
        via_url: bool = True,
    ) -> Artifact:
        """Downloads into dest.part, resuming from its size, checks the SHA-256
        and renames to dest only when the whole file is right. The check at the
        end is what makes resuming safe, so the partial file needs no fsync.

        Bytes come from the artifact's download URL (S3 presigned, or the
        service's own HTTP server) with a Range request, so they do not pass
        through the service; if the URL cannot be used, from the gRPC stream."""
        artifact = await self.stat(artifact_id)
        partial = dest.with_name(dest.name + ".part")
        have = partial.stat().st_size if partial.exists() else 0
        if have > artifact.size:
            partial.unlink()
            have = 0
        with transfer.Sink(partial, hash_existing=have > 0) as sink:
            if progress:
                progress(have)
            counted = transfer.Counter(have, progress)
            if via_url and have < artifact.size:
                try:
                    url = await self.url(artifact_id)
                    await asyncio.to_thread(transfer.fetch_url, url, sink, counted, self.policy)
                except (ClientError, OSError, Unavailable) as exc:
                    log.warning("download URL failed (%s); streaming through the service", exc)
            if counted.have < artifact.size:
                await self.policy.acall(lambda: self._fetch_stream(artifact_id, sink, counted))
            sha256 = sink.finish()
        if counted.have != artifact.size or sha256 != artifact.checksums.sha256:
            partial.unlink(missing_ok=True)
            raise ClientError(
                f"download of {artifact_id} is corrupt (sha256 {sha256}, "
                f"expected {artifact.checksums.sha256}); removed the partial file, run again"
            )
        os.replace(partial, dest)
        return artifact

    async def stream(self, artifact_id: str, offset: int = 0) -> AsyncIterator[bytes]:
        """The artifact's bytes from offset, as they arrive, without a local copy
        (the publisher hands them on to Glance). A dropped stream resumes where
        it stopped, within the retry policy."""
        have = offset
        backoff = self.policy.backoff(f"reading {artifact_id}")
        while True:
            request = pb.DownloadRequest(id=artifact_id, offset=have)
            try:
                async for chunk in self._stub.Download(request):
                    have += len(chunk.data)
                    yield chunk.data
                return
            except grpc.RpcError as exc:
                error = from_rpc(exc)
                if not isinstance(error, Unavailable):
                    raise error from None
                await backoff.wait(error)

    async def _fetch_stream(
        self, artifact_id: str, sink: transfer.Sink, counted: transfer.Counter
    ) -> None:
        request = pb.DownloadRequest(id=artifact_id, offset=counted.have)

        async def stream() -> None:
            async for chunk in self._stub.Download(request):
                sink.add(chunk.data)
                counted.add(len(chunk.data))

        await _rpc.mapped(stream)


class StorageClient:
    """The blocking StorageClient: the async client's calls, waited for."""

    def __init__(
        self,
        address: str = "",
        *,
        policy: RetryPolicy = _rpc.DEFAULT_POLICY,
        state_dir: Path | None = None,
        token: str = "",
    ) -> None:
        self.address = discovery.address("storage", address)
        self._loop = LoopThread("kiln-storage-client")
        self._async = self._loop.run(self._make(policy, state_dir, token))

    async def _make(
        self, policy: RetryPolicy, state_dir: Path | None, token: str
    ) -> AsyncStorageClient:
        return AsyncStorageClient(self.address, policy=policy, state_dir=state_dir, token=token)

    def close(self) -> None:
        self._loop.close(self._async.close())

    def __enter__(self) -> StorageClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def stat(self, artifact_id: str) -> Artifact:
        return self._loop.run(self._async.stat(artifact_id))

    def list(
        self, labels: dict[str, str] | None = None, page_size: int = MAX_PAGE
    ) -> Iterator[Artifact]:
        return self._loop.iterate(self._async.list(labels, page_size))

    def url(self, artifact_id: str, expires_seconds: int = 0) -> str:
        return self._loop.run(self._async.url(artifact_id, expires_seconds))

    def delete(self, artifact_id: str, *, missing_ok: bool = False) -> bool:
        return self._loop.run(self._async.delete(artifact_id, missing_ok=missing_ok))

    def push(
        self,
        path: Path,
        labels: dict[str, str],
        *,
        part_size: int = 16 * 1024 * 1024,
        concurrency: int = 4,
        sha256: str = "",
        progress: Progress | None = None,
        stop: StopFlag | None = None,
    ) -> Artifact:
        return self._loop.run(
            self._async.push(
                path,
                labels,
                part_size=part_size,
                concurrency=concurrency,
                sha256=sha256,
                progress=progress,
                stop=stop,
            )
        )

    def get(
        self,
        artifact_id: str,
        dest: Path,
        progress: Progress | None = None,
        *,
        via_url: bool = True,
    ) -> Artifact:
        return self._loop.run(self._async.get(artifact_id, dest, progress, via_url=via_url))
