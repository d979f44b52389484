"""S3 backend through the MinIO SDK.

Multipart uploads map one-to-one onto S3 multipart uploads, so their state
lives in S3 and any storage replica can resume them. The SDK's public
put_object() cannot resume, so the multipart calls use its documented-in-code
S3 API wrappers (_create_multipart_upload and friends); the minio version is
pinned below 7.3 for that reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from typing import TypeVar

import urllib3
from minio import Minio
from minio.datatypes import Part as S3Part
from minio.error import S3Error
from urllib3.exceptions import HTTPError as Urllib3Error

from kiln_common.errors import NotFound, Unavailable
from kiln_common.grpc_server import CHUNK_SIZE
from kiln_storage.backends.base import MultipartInfo, check_key

_MISSING = {"NoSuchKey", "NoSuchUpload", "NoSuchObject", "ResourceNotFound"}

T = TypeVar("T")


def make_http_client(retries: int, timeout: float, pool: int) -> urllib3.PoolManager:
    """Bounded retries with backoff: an unreachable S3 fails in seconds, not minutes."""
    return urllib3.PoolManager(
        timeout=urllib3.Timeout(connect=timeout, read=max(timeout, 60.0)),
        maxsize=pool,
        retries=urllib3.Retry(
            total=retries, backoff_factor=0.2, status_forcelist=[500, 502, 503, 504]
        ),
    )


class S3Store:
    name = "s3"

    def __init__(
        self,
        client: Minio,
        bucket: str,
        *,
        presign_client: Minio | None = None,
    ) -> None:
        self._client = client
        self._presign = presign_client or client
        self.bucket = bucket

    async def _call(self, fn: Callable[..., T], *args: object, **kwargs: object) -> T:
        try:
            return await asyncio.to_thread(fn, *args, **kwargs)
        except S3Error as exc:
            if exc.code in _MISSING:
                raise NotFound(f"{exc.code}: {exc.object_name or exc.bucket_name}") from None
            raise
        except (Urllib3Error, OSError) as exc:
            raise Unavailable(f"S3 endpoint unreachable: {type(exc).__name__}") from exc

    async def ensure_bucket(self) -> None:
        if not await self._call(self._client.bucket_exists, self.bucket):
            try:
                await self._call(self._client.make_bucket, self.bucket)
            except S3Error as exc:
                if exc.code not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                    raise

    async def put(self, key: str, data: bytes) -> None:
        check_key(key)
        await self._call(self._client.put_object, self.bucket, key, io.BytesIO(data), len(data))

    async def get(self, key: str) -> bytes:
        check_key(key)

        def fetch() -> bytes:
            response = self._client.get_object(self.bucket, key)
            try:
                return response.read()
            finally:
                response.close()
                response.release_conn()

        return await self._call(fetch)

    async def size(self, key: str) -> int | None:
        check_key(key)
        try:
            stat = await self._call(self._client.stat_object, self.bucket, key)
        except NotFound:
            return None
        return stat.size

    async def delete(self, key: str) -> None:
        check_key(key)
        await self._call(self._client.remove_object, self.bucket, key)

    async def list_keys(self, prefix: str, start_after: str = "", limit: int = 1000) -> list[str]:
        def names() -> list[str]:
            out: list[str] = []
            # The public list_objects always asks for 1000 keys a request: a
            # page of 50 index markers would fetch and parse 20 times too many.
            for obj in self._client._list_objects(
                self.bucket,
                delimiter="/",
                encoding_type="url",
                max_keys=min(limit, 1000),
                prefix=prefix,
                start_after=start_after or None,
            ):
                if obj.object_name and not obj.is_dir:
                    out.append(obj.object_name)
                    if len(out) >= limit:
                        break
            return out

        return await self._call(names)

    async def read(
        self, key: str, offset: int = 0, length: int | None = None
    ) -> AsyncIterator[bytes]:
        check_key(key)
        response = await self._call(
            self._client.get_object, self.bucket, key, offset=offset, length=length or 0
        )
        try:
            stream = response.stream(CHUNK_SIZE)
            while True:
                chunk = await self._call(next, stream, b"")
                if not chunk:
                    break
                yield chunk
        finally:
            response.close()
            response.release_conn()

    async def mp_create(self, key: str, part_size: int) -> str:
        check_key(key)
        return await self._call(
            self._client._create_multipart_upload,
            self.bucket,
            key,
            {"Content-Type": "application/octet-stream"},
        )

    async def mp_put(self, key: str, upload_id: str, number: int, data: bytes) -> None:
        await self._call(self._client._upload_part, self.bucket, key, data, None, upload_id, number)

    async def _s3_parts(self, key: str, upload_id: str) -> list[S3Part]:
        def fetch() -> list[S3Part]:
            parts: list[S3Part] = []
            marker: str | None = None
            while True:
                result = self._client._list_parts(
                    self.bucket, key, upload_id, part_number_marker=marker
                )
                parts.extend(result.parts)
                if not result.is_truncated:
                    return parts
                marker = str(result.next_part_number_marker)

        return await self._call(fetch)

    async def mp_parts(self, key: str, upload_id: str) -> dict[int, int]:
        return {p.part_number: p.size or 0 for p in await self._s3_parts(key, upload_id)}

    async def mp_complete(self, key: str, upload_id: str, count: int, total: int) -> None:
        parts = sorted(await self._s3_parts(key, upload_id), key=lambda p: p.part_number)
        await self._call(
            self._client._complete_multipart_upload, self.bucket, key, upload_id, parts[:count]
        )

    async def mp_abort(self, key: str, upload_id: str) -> None:
        with contextlib.suppress(NotFound):
            await self._call(self._client._abort_multipart_upload, self.bucket, key, upload_id)

    async def mp_list(self) -> list[MultipartInfo]:
        def fetch() -> list[MultipartInfo]:
            out: list[MultipartInfo] = []
            key_marker: str | None = None
            id_marker: str | None = None
            while True:
                result = self._client._list_multipart_uploads(
                    self.bucket, key_marker=key_marker, upload_id_marker=id_marker
                )
                for up in result.uploads:
                    if up.object_name and up.upload_id and up.initiated_time:
                        out.append(MultipartInfo(up.object_name, up.upload_id, up.initiated_time))
                if not result.is_truncated:
                    return out
                key_marker, id_marker = result.next_key_marker, result.next_upload_id_marker

        return await self._call(fetch)

    def presign(self, key: str, expires: timedelta, filename: str) -> str | None:
        check_key(key)
        return self._presign.presigned_get_object(
            self.bucket,
            key,
            expires=expires,
            response_headers={
                "response-content-disposition": f'attachment; filename="{filename}"',
                "response-content-type": "application/octet-stream",
            },
        )
