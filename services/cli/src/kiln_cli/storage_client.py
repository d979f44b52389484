"""A blocking client of the storage API: resumable uploads in parts and
resumable, verified downloads. Used by the CLI and the benchmark."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import grpc

from kiln_api.storage.v1 import storage_pb2 as pb
from kiln_api.storage.v1 import storage_pb2_grpc as pb_grpc
from kiln_common.grpc_server import CHANNEL_OPTIONS, CHUNK_SIZE

log = logging.getLogger(__name__)
RETRYABLE = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED}
Progress = Callable[[int], None]


class ClientError(Exception):
    """A failure the CLI prints as it is."""


class UploadStopped(ClientError):
    """push() was asked to stop; the upload was aborted, nothing is stored."""


@dataclass(frozen=True)
class UploadPlan:
    path: Path
    size: int
    part_size: int

    @property
    def count(self) -> int:
        return max(1, -(-self.size // self.part_size))

    def part(self, number: int) -> tuple[int, int]:
        offset = (number - 1) * self.part_size
        return offset, min(self.part_size, self.size - offset)


class StorageClient:
    def __init__(self, address: str, *, retries: int = 5, state_dir: Path | None = None) -> None:
        self.channel = grpc.insecure_channel(address, options=CHANNEL_OPTIONS)
        self.stub = pb_grpc.StorageStub(self.channel)
        self.retries = retries
        self.state_dir = state_dir

    def close(self) -> None:
        self.channel.close()

    def _retrying(self, what: str, call: Callable[[], object]) -> object:
        for attempt in range(self.retries + 1):
            try:
                return call()
            except grpc.RpcError as exc:
                if exc.code() not in RETRYABLE or attempt == self.retries:
                    raise
                time.sleep(min(0.5 * 2**attempt, 10))
        raise AssertionError(what)

    # ---- upload --------------------------------------------------------------

    def _state_file(self, path: Path, size: int) -> Path | None:
        if self.state_dir is None:
            return None
        st = path.stat()
        ident = f"{path.resolve()}\0{size}\0{st.st_mtime_ns}".encode()
        return self.state_dir / f"upload-{hashlib.sha256(ident).hexdigest()[:32]}.json"

    def _resume_or_create(
        self, plan: UploadPlan, labels: dict[str, str], sha256: str, state: Path | None
    ) -> pb.UploadSession:
        if state is not None and state.exists():
            upload_id = json.loads(state.read_text())["upload_id"]
            try:
                return self.stub.GetUpload(pb.GetUploadRequest(upload_id=upload_id))
            except grpc.RpcError as exc:
                if exc.code() != grpc.StatusCode.NOT_FOUND:
                    raise
        session: pb.UploadSession = self._retrying(  # type: ignore[assignment]
            "create upload",
            lambda: self.stub.CreateUpload(
                pb.CreateUploadRequest(
                    labels=labels,
                    size=plan.size,
                    part_size=plan.part_size,
                    expected=pb.Checksums(sha256=sha256),
                )
            ),
        )
        if state is not None:
            state.parent.mkdir(parents=True, exist_ok=True)
            state.write_text(json.dumps({"upload_id": session.upload_id}))
        return session

    def _send_part(
        self, upload_id: str, plan: UploadPlan, number: int, stop: threading.Event | None = None
    ) -> int:
        offset, length = plan.part(number)

        def requests() -> Iterator[pb.UploadPartRequest]:
            yield pb.UploadPartRequest(header=pb.PartHeader(upload_id=upload_id, number=number))
            with open(plan.path, "rb") as f:
                f.seek(offset)
                left = length
                while left:
                    if stop is not None and stop.is_set():
                        raise UploadStopped(f"upload of {plan.path} stopped")
                    data = f.read(min(CHUNK_SIZE, left))
                    if not data:
                        raise ClientError(f"{plan.path} shrank while it was uploaded")
                    left -= len(data)
                    yield pb.UploadPartRequest(chunk=data)

        self._retrying(f"part {number}", lambda: self.stub.UploadPart(requests()))
        return length

    def push(
        self,
        path: Path,
        labels: dict[str, str],
        *,
        part_size: int = 16 * 1024 * 1024,
        concurrency: int = 4,
        sha256: str = "",
        progress: Progress | None = None,
        stop: threading.Event | None = None,
    ) -> pb.Artifact:
        """Uploads path in parts, several at once. A part that fails on a
        dropped connection is sent again; a push interrupted entirely resumes
        from the parts the service has when run again (state in state_dir).
        Setting stop aborts the upload: its parts are removed."""
        size = path.stat().st_size
        if size == 0:
            raise ClientError(f"{path} is empty: there is nothing to store")
        plan = UploadPlan(path, size, part_size)
        state = self._state_file(path, size)
        session = self._resume_or_create(plan, labels, sha256, state)
        have = {p.number for p in session.parts if p.size == plan.part(p.number)[1]}
        if progress:
            progress(sum(plan.part(n)[1] for n in have))
        todo = [n for n in range(1, plan.count + 1) if n not in have]
        try:
            self._send_parts(session.upload_id, plan, todo, concurrency, progress, stop)
        except BaseException:
            if stop is not None and stop.is_set():
                self.stub.AbortUpload(pb.AbortUploadRequest(upload_id=session.upload_id))
                if state is not None:
                    state.unlink(missing_ok=True)
                raise UploadStopped(f"upload of {path} stopped and aborted") from None
            raise
        try:
            artifact: pb.Artifact = self._retrying(  # type: ignore[assignment]
                "complete",
                lambda: self.stub.CompleteUpload(
                    pb.CompleteUploadRequest(upload_id=session.upload_id)
                ),
            )
        finally:
            if state is not None:
                state.unlink(missing_ok=True)
        return artifact

    def _send_parts(
        self,
        upload_id: str,
        plan: UploadPlan,
        todo: list[int],
        concurrency: int,
        progress: Progress | None,
        stop: threading.Event | None,
    ) -> None:
        with ThreadPoolExecutor(max_workers=concurrency) as pool:
            futures: list[Future[int]] = [
                pool.submit(self._send_part, upload_id, plan, n, stop) for n in todo
            ]
            for fut in futures:
                fut.add_done_callback(
                    lambda f: progress and not f.exception() and progress(f.result())
                )
            done, _ = wait(futures, return_when=FIRST_EXCEPTION)
            for fut in done:
                if fut.exception():
                    for other in futures:
                        other.cancel()
                    raise fut.exception()  # type: ignore[misc]

    # ---- download ------------------------------------------------------------

    def get(
        self,
        artifact_id: str,
        dest: Path,
        progress: Progress | None = None,
        *,
        via_url: bool = True,
    ) -> pb.Artifact:
        """Downloads into dest.part, resuming from its size, checks the SHA-256
        and renames to dest only when the whole file is right. The check at the
        end is what makes resuming safe, so the partial file needs no fsync.

        Bytes come from the artifact's download URL (S3 presigned, or the
        service's own HTTP server) with a Range request, so they do not pass
        through the service; if the URL cannot be used, from the gRPC stream."""
        artifact: pb.Artifact = self.stub.StatArtifact(pb.StatArtifactRequest(id=artifact_id))
        partial = dest.with_name(dest.name + ".part")
        have = partial.stat().st_size if partial.exists() else 0
        if have > artifact.size:
            partial.unlink()
            have = 0
        with _Sink(partial, hash_existing=have > 0) as sink:
            if progress:
                progress(have)
            counted = _Counter(have, progress)
            if via_url and have < artifact.size:
                try:
                    self._fetch_url(artifact_id, sink, counted)
                except (ClientError, OSError, grpc.RpcError) as exc:
                    log.warning("download URL failed (%s); streaming through the service", exc)
            if counted.have < artifact.size:
                self._fetch_stream(artifact_id, sink, counted)
            sha256 = sink.finish()
        if counted.have != artifact.size or sha256 != artifact.checksums.sha256:
            partial.unlink(missing_ok=True)
            raise ClientError(
                f"download of {artifact_id} is corrupt (sha256 {sha256}, "
                f"expected {artifact.checksums.sha256}); removed the partial file, run again"
            )
        os.replace(partial, dest)
        return artifact

    def _fetch_url(self, artifact_id: str, sink: _Sink, counted: _Counter) -> None:
        url = self.stub.GetDownloadUrl(pb.GetDownloadUrlRequest(id=artifact_id)).url
        for attempt in range(self.retries + 1):
            start = counted.have
            headers = {"Range": f"bytes={start}-"} if start else {}
            try:
                with urllib.request.urlopen(
                    urllib.request.Request(url, headers=headers), timeout=60
                ) as response:
                    if start and response.status != 206:
                        raise ClientError(f"{urlsplit(url).netloc} ignored the Range request")
                    while block := response.read(CHUNK_SIZE):
                        sink.add(block)
                        counted.add(len(block))
                return
            except urllib.error.HTTPError:
                raise  # refused (expired, forbidden): retrying will not help
            except OSError:
                if attempt == self.retries:
                    raise
                time.sleep(min(0.5 * 2**attempt, 10))

    def _fetch_stream(self, artifact_id: str, sink: _Sink, counted: _Counter) -> None:
        for attempt in range(self.retries + 1):
            try:
                request = pb.DownloadRequest(id=artifact_id, offset=counted.have)
                for chunk in self.stub.Download(request):
                    sink.add(chunk.data)
                    counted.add(len(chunk.data))
                return
            except grpc.RpcError as exc:
                if exc.code() not in RETRYABLE or attempt == self.retries:
                    raise
                time.sleep(min(0.5 * 2**attempt, 10))


class _Counter:
    """Bytes received so far, reported to the progress callback."""

    def __init__(self, have: int, progress: Progress | None) -> None:
        self.have = have
        self._progress = progress

    def add(self, n: int) -> None:
        self.have += n
        if self._progress:
            self._progress(n)


class _Sink:
    """Appends chunks to a file and hashes them on two worker threads, so
    receiving, writing and hashing overlap (each releases the GIL)."""

    IN_FLIGHT = 8

    def __init__(self, path: Path, hash_existing: bool) -> None:
        self._file = open(path, "ab")  # noqa: SIM115 - closed in __exit__
        self._digest = hashlib.sha256()
        self._writer = ThreadPoolExecutor(1)
        self._hasher = ThreadPoolExecutor(1)
        self._pending: list[Future[object]] = []
        if hash_existing:
            with open(path, "rb") as old:
                for block in iter(lambda: old.read(CHUNK_SIZE), b""):
                    self._digest.update(block)

    def add(self, data: bytes) -> None:
        self._pending.append(self._writer.submit(self._file.write, data))
        self._pending.append(self._hasher.submit(self._digest.update, data))
        if len(self._pending) > 2 * self.IN_FLIGHT:
            for fut in self._pending[:2]:
                fut.result()
            del self._pending[:2]

    def finish(self) -> str:
        for fut in self._pending:
            fut.result()
        self._pending.clear()
        self._file.flush()
        return self._digest.hexdigest()

    def __enter__(self) -> _Sink:
        return self

    def __exit__(self, *exc: object) -> None:
        # Whatever happened, what was received is on disk for the next resume.
        for fut in self._pending:
            fut.exception()
        self._writer.shutdown()
        self._hasher.shutdown()
        self._file.close()
