"""Filesystem backend: the zero-setup default.

Layout under root:
  objects/<key>              every object, written to a temp name then renamed
  multipart/<id>/target      the key a multipart upload will become
  multipart/<id>/data        the object being assembled; parts land at their offsets
  multipart/<id>/parts/<n>   the size of part n, written after its bytes are synced
Parts go straight to their final offset, so completing an upload is a rename,
not a copy of the data.
"""

from __future__ import annotations

import asyncio
import bisect
import os
import shutil
import time
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

from kiln_common.errors import InvalidArgument, NotFound
from kiln_common.grpc_server import CHUNK_SIZE
from kiln_storage.backends.base import MultipartInfo, check_key

# Sorted listings of a few large directories (the index's), reused while the
# directory's mtime stays the same: reading and sorting 100,000 names costs
# ~100 ms here, a page needs 50 of them. A listing is kept only once its
# directory has been still for RACY_NS: a change within the timestamp
# granularity of the filesystem could otherwise leave the mtime unchanged.
LISTINGS_KEPT = 8
LISTING_MIN_NAMES = 1000
RACY_NS = 1_000_000_000


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fdatasync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


class FilesystemStore:
    name = "fs"

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        self._objects = self.root / "objects"
        self._multipart = self.root / "multipart"
        self._objects.mkdir(parents=True, exist_ok=True)
        self._multipart.mkdir(parents=True, exist_ok=True)
        self._listings: OrderedDict[Path, tuple[tuple[int, int], list[str]]] = OrderedDict()

    def local_path(self, key: str) -> Path:
        """The file holding key: the HTTP server sends it with sendfile."""
        path = self._objects.joinpath(*check_key(key))
        # Belt and braces: the resolved path must stay inside the store.
        if not path.resolve().is_relative_to(self._objects):
            raise InvalidArgument(f"invalid object key {key[:80]!r}")
        return path

    def _mp_dir(self, upload_id: str) -> Path:
        check_key(upload_id)
        return self._multipart / upload_id

    async def put(self, key: str, data: bytes) -> None:
        await asyncio.to_thread(_write_atomic, self.local_path(key), data)

    async def get(self, key: str) -> bytes:
        try:
            return await asyncio.to_thread(self.local_path(key).read_bytes)
        except FileNotFoundError:
            raise NotFound(f"object {key} not found") from None

    async def size(self, key: str) -> int | None:
        try:
            return self.local_path(key).stat().st_size
        except FileNotFoundError:
            return None

    async def delete(self, key: str) -> None:
        path = self.local_path(key)
        path.unlink(missing_ok=True)
        # Drop directories left empty (per-content ref folders), never the root.
        parent = path.parent
        while parent != self._objects:
            try:
                parent.rmdir()
            except OSError:
                break
            parent = parent.parent

    async def list_keys(self, prefix: str, start_after: str = "", limit: int = 1000) -> list[str]:
        try:
            names = self._sorted_names(self.local_path(prefix.rstrip("/")))
        except FileNotFoundError:
            return []
        if start_after.startswith(prefix):
            first = bisect.bisect_right(names, start_after[len(prefix) :])
        else:
            first = 0 if start_after < prefix else len(names)
        return [prefix + n for n in names[first : first + limit]]

    def _sorted_names(self, folder: Path) -> list[str]:
        st = os.stat(folder)
        stamp = (st.st_ino, st.st_mtime_ns)
        kept = self._listings.get(folder)
        if kept is not None and kept[0] == stamp:
            self._listings.move_to_end(folder)
            return kept[1]
        names = sorted(n for n in os.listdir(folder) if not n.startswith("."))
        if len(names) >= LISTING_MIN_NAMES and time.time_ns() - st.st_mtime_ns > RACY_NS:
            self._listings[folder] = (stamp, names)
            if len(self._listings) > LISTINGS_KEPT:
                self._listings.popitem(last=False)
        return names

    async def read(
        self, key: str, offset: int = 0, length: int | None = None
    ) -> AsyncIterator[bytes]:
        path = self.local_path(key)
        try:
            f = open(path, "rb")  # noqa: SIM115, ASYNC230 - closed below; opening is quick
        except FileNotFoundError:
            raise NotFound(f"object {key} not found") from None
        try:
            f.seek(offset)
            left = length
            while left is None or left > 0:
                want = CHUNK_SIZE if left is None else min(CHUNK_SIZE, left)
                chunk = await asyncio.to_thread(f.read, want)
                if not chunk:
                    break
                if left is not None:
                    left -= len(chunk)
                yield chunk
        finally:
            f.close()

    async def mp_create(self, key: str, part_size: int) -> str:
        check_key(key)
        upload_id = uuid.uuid4().hex
        folder = self._mp_dir(upload_id)
        (folder / "parts").mkdir(parents=True)
        (folder / "data").touch()
        _write_atomic(folder / "target", f"{key}\n{part_size}\n".encode())
        return upload_id

    def _mp_meta(self, key: str, upload_id: str) -> tuple[Path, int]:
        folder = self._mp_dir(upload_id)
        try:
            target, part_size = (folder / "target").read_text().split()
        except FileNotFoundError:
            raise NotFound(f"multipart upload {upload_id} not found") from None
        if target != key:
            raise NotFound(f"multipart upload {upload_id} is not for {key}")
        return folder, int(part_size)

    async def mp_put(self, key: str, upload_id: str, number: int, data: bytes) -> None:
        folder, part_size = self._mp_meta(key, upload_id)
        if len(data) > part_size:
            raise InvalidArgument(f"part {number} is larger than the part size {part_size}")

        def write() -> None:
            fd = os.open(folder / "data", os.O_WRONLY)
            try:
                os.pwrite(fd, data, (number - 1) * part_size)
                os.fdatasync(fd)  # the marker below promises the bytes are on disk
            finally:
                os.close(fd)
            _write_atomic(folder / "parts" / str(number), str(len(data)).encode())

        await asyncio.to_thread(write)

    async def mp_parts(self, key: str, upload_id: str) -> dict[int, int]:
        folder, _ = self._mp_meta(key, upload_id)
        return {
            int(p.name): int(p.read_text())
            for p in (folder / "parts").iterdir()
            if p.name.isdigit()
        }

    async def mp_complete(self, key: str, upload_id: str, count: int, total: int) -> None:
        folder, _ = self._mp_meta(key, upload_id)
        final = self.local_path(key)

        def join() -> None:
            data = folder / "data"
            os.truncate(data, total)  # a shorter last part may leave stale bytes after it
            final.parent.mkdir(parents=True, exist_ok=True)
            os.replace(data, final)
            shutil.rmtree(folder, ignore_errors=True)

        await asyncio.to_thread(join)

    async def mp_abort(self, key: str, upload_id: str) -> None:
        await asyncio.to_thread(shutil.rmtree, self._mp_dir(upload_id), True)

    async def mp_list(self) -> list[MultipartInfo]:
        out = []
        for folder in self._multipart.iterdir():
            try:
                key = (folder / "target").read_text().split()[0]
                started = (folder / "target").stat().st_mtime
            except (FileNotFoundError, IndexError):
                # Created but never described: treat as started when the folder was.
                key, started = "", folder.stat().st_mtime
            out.append(MultipartInfo(key, folder.name, datetime.fromtimestamp(started, UTC)))
        return out

    def presign(self, key: str, expires: timedelta, filename: str) -> str | None:
        return None  # the service's own HTTP server signs URLs for this backend
