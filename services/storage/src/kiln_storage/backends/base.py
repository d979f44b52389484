"""The interface every storage backend implements."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol

from kiln_common.errors import InvalidArgument

# Keys are made by the core, never by clients; this check is a second wall.
_SEGMENT_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def check_key(key: str) -> list[str]:
    parts = key.split("/")
    if not parts or any(not _SEGMENT_RE.match(p) or p in (".", "..") for p in parts):
        raise InvalidArgument(f"invalid object key {key[:80]!r}")
    return parts


@dataclass(frozen=True)
class MultipartInfo:
    key: str
    upload_id: str
    initiated: datetime


class ObjectStore(Protocol):
    name: str

    async def put(self, key: str, data: bytes) -> None:
        """Stores a small object atomically (readers see all or nothing)."""

    async def get(self, key: str) -> bytes:
        """The whole object; NotFound if missing."""

    async def size(self, key: str) -> int | None:
        """The object's size, or None if it does not exist."""

    async def delete(self, key: str) -> None:
        """Removes the object; a missing object is not an error."""

    async def list_keys(self, prefix: str, start_after: str = "", limit: int = 1000) -> list[str]:
        """Keys directly under prefix (which ends with '/'), sorted, after start_after."""

    def read(self, key: str, offset: int = 0, length: int | None = None) -> AsyncIterator[bytes]:
        """Streams length bytes (None: to the end) from offset."""

    async def mp_create(self, key: str, part_size: int) -> str:
        """Starts a multipart upload of key; returns the backend's upload id."""

    async def mp_put(self, key: str, upload_id: str, number: int, data: bytes) -> None:
        """Stores part number (from 1); every part but the last is part_size long."""

    async def mp_parts(self, key: str, upload_id: str) -> dict[int, int]:
        """The stored parts: number -> size. NotFound if the upload is gone."""

    async def mp_complete(self, key: str, upload_id: str, count: int, total: int) -> None:
        """Joins parts 1..count (total bytes) into the object key."""

    async def mp_abort(self, key: str, upload_id: str) -> None:
        """Drops the upload and its parts; a missing upload is not an error."""

    async def mp_list(self) -> list[MultipartInfo]:
        """Every multipart upload in progress, for the janitor."""

    def presign(self, key: str, expires: timedelta, filename: str) -> str | None:
        """A GET URL for key that the backend serves itself, or None if it has none."""
