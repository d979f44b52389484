"""A build's files in the storage service: uploaded with labels that name the
build and its attempt, so the files of an attempt that did not finish can be
found and removed, and a build never ends with two sets of artifacts."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from kiln_builder.engine import BaseImage
from kiln_builder.storage import StorageAccess
from kiln_common.builds import BuildArtifact

KIND_LABEL = "kiln-kind"  # image | sbom | checks | console-log | tests | build-log
ATTEMPT_LABEL = "kiln-attempt"
MAX_LABEL_VALUE = 256  # the storage service's limit


def base_labels(base: BaseImage) -> dict[str, str]:
    """A customised build's artifacts name their base: its digest in full, its
    source cut to the longest label value storage keeps."""
    return {"base-sha256": base.sha256, "base-source": base.source[:MAX_LABEL_VALUE]}


@dataclass(frozen=True)
class Upload:
    path: Path
    kind: str
    format: str


class BuildArtifacts:
    def __init__(self, storage: StorageAccess, build_id: str, attempt: int) -> None:
        self.storage = storage
        self.build_id = build_id
        self.attempt = attempt
        self.stop = asyncio.Event()  # set: uploads in flight abort
        self.labels: dict[str, str] = {}  # more labels for every artifact (the base's)

    def _labels(self, name: str, version: str, upload: Upload) -> dict[str, str]:
        return {
            "name": name,
            "version": version,
            "format": upload.format,
            "build-id": self.build_id,
            KIND_LABEL: upload.kind,
            ATTEMPT_LABEL: str(self.attempt),
            **self.labels,
        }

    async def upload(
        self, upload: Upload, name: str, version: str, progress: Callable[[int], None]
    ) -> BuildArtifact:
        labels = self._labels(name, version, upload)
        async with self.storage.client() as client:
            stored = await client.push(upload.path, labels, progress=progress, stop=self.stop)
        return BuildArtifact(
            artifact_id=stored.id,
            name=upload.path.name,
            kind=upload.kind,
            format=upload.format,
            size=stored.size,
            sha256=stored.checksums.sha256,
            sha512=stored.checksums.sha512,
        )

    async def remove(self, *, other_attempts_only: bool = False, attempt_only: bool = False) -> int:
        """Deletes this build's artifacts: all of them, those of earlier (or
        other) attempts, or this attempt's. Returns how many."""
        removed = 0
        async with self.storage.client() as client:
            found = [a async for a in client.list({"build-id": self.build_id})]
            for artifact in found:
                mine = artifact.labels.get(ATTEMPT_LABEL) == str(self.attempt)
                if (other_attempts_only and mine) or (attempt_only and not mine):
                    continue
                removed += await client.delete(artifact.id, missing_ok=True)
        return removed
