"""A build's files in the storage service: uploaded with labels that name the
build and its attempt, so the files of an attempt that did not finish can be
found and removed, and a build never ends with two sets of artifacts."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
from google.protobuf.duration_pb2 import Duration

from kiln_api.builder.v1 import builder_pb2 as bpb
from kiln_api.storage.v1 import storage_pb2 as spb
from kiln_cli.storage_client import StorageClient
from kiln_common.errors import Unavailable

KIND_LABEL = "kiln-kind"  # image | sbom | console-log | build-log
ATTEMPT_LABEL = "kiln-attempt"
URL_SECONDS = 7 * 24 * 3600  # the longest a download URL may live


@dataclass(frozen=True)
class Upload:
    path: Path
    kind: str
    format: str


class BuildArtifacts:
    def __init__(self, address: str, build_id: str, attempt: int) -> None:
        self.address = address
        self.build_id = build_id
        self.attempt = attempt
        self.stop = threading.Event()  # set: uploads in flight abort

    def _labels(self, name: str, version: str, upload: Upload) -> dict[str, str]:
        return {
            "name": name,
            "version": version,
            "format": upload.format,
            "build-id": self.build_id,
            KIND_LABEL: upload.kind,
            ATTEMPT_LABEL: str(self.attempt),
        }

    async def upload(
        self, upload: Upload, name: str, version: str, progress: Callable[[int], None]
    ) -> bpb.BuildArtifact:
        labels = self._labels(name, version, upload)
        stored = await asyncio.to_thread(self._push, upload.path, labels, progress)
        url = await asyncio.to_thread(self._url, stored.id)
        return bpb.BuildArtifact(
            artifact_id=stored.id,
            name=upload.path.name,
            kind=upload.kind,
            format=upload.format,
            size=stored.size,
            sha256=stored.checksums.sha256,
            sha512=stored.checksums.sha512,
            url=url,
        )

    def _push(
        self, path: Path, labels: dict[str, str], progress: Callable[[int], None]
    ) -> spb.Artifact:
        with _client(self.address) as client:
            return client.push(path, labels, progress=progress, stop=self.stop)

    def _url(self, artifact_id: str) -> str:
        with _client(self.address) as client:
            request = spb.GetDownloadUrlRequest(
                id=artifact_id, expires_in=Duration(seconds=URL_SECONDS)
            )
            return str(client.stub.GetDownloadUrl(request).url)

    async def remove(self, *, other_attempts_only: bool = False, attempt_only: bool = False) -> int:
        """Deletes this build's artifacts: all of them, those of earlier (or
        other) attempts, or this attempt's. Returns how many."""
        return await asyncio.to_thread(self._remove, other_attempts_only, attempt_only)

    def _remove(self, other_attempts_only: bool, attempt_only: bool) -> int:
        removed = 0
        with _client(self.address) as client:
            for artifact in _listed(client, {"build-id": self.build_id}):
                mine = artifact.labels.get(ATTEMPT_LABEL) == str(self.attempt)
                if (other_attempts_only and mine) or (attempt_only and not mine):
                    continue
                try:
                    client.stub.DeleteArtifact(spb.DeleteArtifactRequest(id=artifact.id))
                    removed += 1
                except grpc.RpcError as exc:
                    if exc.code() != grpc.StatusCode.NOT_FOUND:
                        raise
        return removed


def _listed(client: StorageClient, selector: dict[str, str]) -> list[spb.Artifact]:
    found: list[spb.Artifact] = []
    token = ""
    while True:
        page = client.stub.ListArtifacts(
            spb.ListArtifactsRequest(label_selector=selector, page_size=500, page_token=token)
        )
        found += page.artifacts
        token = page.next_page_token
        if not token:
            return found


@contextlib.contextmanager
def _client(address: str) -> Iterator[StorageClient]:
    """A StorageClient, closed on leaving; its UNAVAILABLE is Unavailable."""
    client = StorageClient(address, retries=3)
    try:
        yield client
    except grpc.RpcError as exc:
        if exc.code() == grpc.StatusCode.UNAVAILABLE:
            raise Unavailable(f"the storage service at {address} is unavailable") from exc
        raise
    finally:
        client.close()
