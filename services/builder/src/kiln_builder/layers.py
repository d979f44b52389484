"""Layers: a step's result (the root filesystem as a zstd-compressed tar)
keyed by a hash of the step's inputs and its parent's key, so a rebuild whose
recipe changed only in a late step redoes only the steps from there.

Layers are kept on the builder's disk and, when a storage service is given,
shared through it (labelled artifacts), so every builder pod reuses what any
of them built. A layer whose checksum does not match is discarded, never used."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

from kiln_builder.storage import StorageAccess
from kiln_common.artifacts import Artifact
from kiln_common.digests import file_sha256
from kiln_common.errors import NotFound
from kiln_common.proc import run

log = logging.getLogger(__name__)

# GNU tar flags that keep everything an OS root needs and give the same bytes
# for the same tree.
TAR_FLAGS = ["--numeric-owner", "--xattrs", "--xattrs-include=*", "--acls", "--sort=name"]
ZSTD = ["-I", "zstd -T0 -3"]
SUFFIX = ".tar.zst"
LABEL = "kiln-layer"


def chain_key(parent: str, step: str, inputs: Any) -> str:
    canon = json.dumps({"parent": parent, "step": step, "inputs": inputs}, sort_keys=True)
    return hashlib.sha256(canon.encode()).hexdigest()


def prune_oldest(files: list[Path], max_bytes: int) -> list[Path]:
    """Removes the least recently used of files (by mtime: a use touches them)
    until the rest fit in max_bytes; returns those removed."""
    files = sorted(files, key=lambda p: p.stat().st_mtime)
    total = sum(p.stat().st_size for p in files)
    removed = []
    for path in files:
        if total <= max_bytes:
            break
        total -= path.stat().st_size
        path.unlink()
        removed.append(path)
    return removed


class RemoteLayers:
    """Layers as artifacts in the storage service, labelled kiln-layer=STEP-KEY."""

    def __init__(self, storage: StorageAccess) -> None:
        self.storage = storage
        self._found: dict[str, Artifact] = {}  # has() remembers, fetch() reuses

    async def _find(self, step: str, key: str) -> Artifact | None:
        async with self.storage.client() as client:
            async for artifact in client.list({LABEL: f"{step}-{key}"}, page_size=1):
                self._found[f"{step}-{key}"] = artifact
                return artifact
        return None

    async def has(self, step: str, key: str) -> bool:
        return await self._find(step, key) is not None

    async def fetch(self, step: str, key: str, dest: Path) -> str:
        found = self._found.get(f"{step}-{key}") or await self._find(step, key)
        if found is None:
            raise NotFound(f"layer {step} {key[:12]} is not in storage")
        async with self.storage.client() as client:
            await client.get(found.id, dest)  # checks the SHA-256 the service recorded
        return found.checksums.sha256

    async def push(self, step: str, key: str, path: Path, sha256: str) -> None:
        labels = {"name": f"layer-{step}", LABEL: f"{step}-{key}", "format": "tar.zst"}
        async with self.storage.client() as client:
            await client.push(path, labels, sha256=sha256)


class LayerStore:
    """Local layers first, then the shared ones; each checked before use."""

    def __init__(self, root: Path, remote: RemoteLayers | None = None) -> None:
        self.root = root
        self.remote = remote
        root.mkdir(parents=True, exist_ok=True)

    def path(self, step: str, key: str) -> Path:
        return self.root / f"{step}-{key}{SUFFIX}"

    def _sidecar(self, step: str, key: str) -> Path:
        return self.root / f"{step}-{key}.sha256"

    async def available(self, step: str, key: str) -> bool:
        if self._sidecar(step, key).is_file() and self.path(step, key).is_file():
            return True
        if self.remote is None:
            return False
        try:
            return await self.remote.has(step, key)
        except Exception as exc:  # noqa: BLE001 - the cache is an optimisation
            log.warning("layer cache in storage unreachable (%s): building locally", exc)
            return False

    async def fetch(self, step: str, key: str) -> Path | None:
        """A verified local copy of the layer, fetched from storage if need be;
        None if there is no good copy anywhere (a corrupt one is discarded)."""
        path, sidecar = self.path(step, key), self._sidecar(step, key)
        if path.is_file() and sidecar.is_file():
            if await asyncio.to_thread(file_sha256, path) == sidecar.read_text().strip():
                os.utime(path)  # recently used: pruned last
                return path
            log.warning("layer %s %s is corrupt: discarded", step, key[:12])
            self.discard(step, key)
        if self.remote is None:
            return None
        partial = path.with_name(path.name + ".partial")
        try:
            sha256 = await self.remote.fetch(step, key, partial)
        except Exception as exc:  # noqa: BLE001 - missing, corrupt, unreachable: build it
            log.warning("layer %s %s not fetched from storage: %s", step, key[:12], exc)
            partial.unlink(missing_ok=True)
            return None
        partial.rename(path)
        sidecar.write_text(sha256 + "\n")
        return path

    def prune(self, max_bytes: int) -> list[Path]:
        """Removes the least recently used layers until the cache fits."""
        removed = prune_oldest(sorted(self.root.glob(f"*{SUFFIX}")), max_bytes)
        for layer in removed:
            layer.with_name(layer.name.removesuffix(SUFFIX) + ".sha256").unlink(missing_ok=True)
        return removed

    def discard(self, step: str, key: str) -> None:
        self.path(step, key).unlink(missing_ok=True)
        self._sidecar(step, key).unlink(missing_ok=True)

    async def save(self, step: str, key: str, rootdir: Path, epoch: int) -> Path:
        dest = self.path(step, key)
        tmp = dest.with_name(dest.name + ".partial")
        try:
            await run(
                ["tar", "-C", rootdir, *TAR_FLAGS, *ZSTD, f"--mtime=@{epoch}", "--clamp-mtime",
                 "-cf", tmp, "."]
            )  # fmt: skip
            tmp.rename(dest)
        finally:
            tmp.unlink(missing_ok=True)
        await self.adopt(step, key)
        return dest

    async def adopt(self, step: str, key: str) -> None:
        """Records the checksum of a layer just written, and shares it."""
        path = self.path(step, key)
        sha256 = await asyncio.to_thread(file_sha256, path)
        self._sidecar(step, key).write_text(sha256 + "\n")
        if self.remote is not None:
            try:
                await self.remote.push(step, key, path, sha256)
            except Exception as exc:  # noqa: BLE001 - sharing is best effort
                log.warning("layer %s %s not shared through storage: %s", step, key[:12], exc)


async def extract(layer: Path, rootdir: Path) -> None:
    rootdir.mkdir(parents=True, exist_ok=True)
    compress = ZSTD if layer.name.endswith(".zst") else []
    await run(["tar", "-C", rootdir, *TAR_FLAGS, *compress, "--same-permissions", "-xf", layer])
