"""The filesystem backend's download server: signed expiring URLs, Range, HEAD,
ETag, and no way out of the store."""

from __future__ import annotations

import asyncio
import http.client
from datetime import timedelta
from urllib.parse import urlparse

import pytest
from support import payload, storage_stub

from kiln_api.storage.v1 import storage_pb2 as pb
from kiln_common.proc import run

pytestmark = pytest.mark.integration


async def _upload(stub, data: bytes, labels: dict[str, str]) -> pb.Artifact:  # type: ignore[no-untyped-def]
    async def requests():  # type: ignore[no-untyped-def]
        yield pb.UploadRequest(header=pb.UploadHeader(labels=labels))
        yield pb.UploadRequest(chunk=data)

    return await stub.Upload(requests())


def _get_sync(port: int, path: str, method: str = "GET", headers: dict[str, str] | None = None):  # type: ignore[no-untyped-def]
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request(method, path, headers=headers or {})
    response = conn.getresponse()
    body = response.read()
    conn.close()
    return response, body


async def _get(port: int, path: str, method: str = "GET", headers: dict[str, str] | None = None):  # type: ignore[no-untyped-def]
    # The server runs on this event loop: the blocking client must not.
    return await asyncio.to_thread(_get_sync, port, path, method, headers)


async def test_range_head_etag_and_curl(storage_service, tmp_path) -> None:  # type: ignore[no-untyped-def]
    data = payload(3 * 1024 * 1024 + 5, seed=21)
    async with storage_service() as (app, address), storage_stub(address) as stub:
        artifact = await _upload(stub, data, {"name": "web", "version": "1.2.0", "format": "qcow2"})
        url = (await stub.GetDownloadUrl(pb.GetDownloadUrlRequest(id=artifact.id))).url
        assert "/web-1.2.0.qcow2?" in url
        out = tmp_path / "first-kib"
        done = await run(["curl", "-sS", "-r", "0-1023", "-o", out, "-w", "%{http_code}", url])
        assert done.stdout == "206" and out.read_bytes() == data[:1024]

        port = urlparse(url).port
        assert port == app.http_port
        path = url[url.index("/artifacts/") :]
        response, body = await _get(port, path, headers={"Range": "bytes=100-199"})
        assert response.status == 206 and body == data[100:200]
        assert response.headers["Content-Range"] == f"bytes 100-199/{len(data)}"
        assert response.headers["Accept-Ranges"] == "bytes"
        response, body = await _get(port, path, "HEAD")
        assert response.status == 200 and body == b""
        assert int(response.headers["Content-Length"]) == len(data)
        etag = response.headers["ETag"]
        assert etag and response.headers["X-Checksum-Sha256"] == artifact.checksums.sha256
        response, _ = await _get(port, path, headers={"If-None-Match": etag})
        assert response.status == 304
        response, body = await _get(port, path)
        assert response.status == 200 and body == data


async def test_signatures_and_expiry_are_enforced(storage_service) -> None:  # type: ignore[no-untyped-def]
    async with storage_service() as (app, address), storage_stub(address) as stub:
        artifact = await _upload(stub, b"secret bytes", {"name": "s"})
        reply = await stub.GetDownloadUrl(
            pb.GetDownloadUrlRequest(id=artifact.id, expires_in=_seconds(60))
        )
        path = reply.url[reply.url.index("/artifacts/") :]
        good, body = await _get(app.http_port, path)
        assert good.status == 200 and body == b"secret bytes"
        tampered = path[:-1] + ("0" if path[-1] != "0" else "1")
        assert (await _get(app.http_port, tampered))[0].status == 403
        unsigned = path.split("?")[0]
        assert (await _get(app.http_port, unsigned))[0].status == 403
        other = await _upload(stub, b"other bytes", {"name": "o"})
        swapped = path.replace(artifact.id, other.id)
        assert (await _get(app.http_port, swapped))[0].status == 403
        expired = app.core.signer.url(artifact.id, "s", timedelta(seconds=-5))
        assert (await _get(app.http_port, expired[expired.index("/artifacts/") :]))[0].status == 403


def _seconds(n: int):  # type: ignore[no-untyped-def]
    from google.protobuf.duration_pb2 import Duration

    return Duration(seconds=n)


@pytest.mark.parametrize(
    "path",
    [
        "/artifacts/../../../../etc/passwd",
        "/artifacts/..%2f..%2f..%2fetc%2fpasswd/x",
        "/artifacts/%2e%2e/%2e%2e/etc/passwd",
        "/artifacts/01m81xd1f8vz217x3gpcw23fyb/../../.url-signing-key",
        "/objects/blobs",
        "/.url-signing-key",
        "/artifacts/..%00/x",
    ],
)
async def test_no_url_reaches_outside_the_store(storage_service, path: str) -> None:  # type: ignore[no-untyped-def]
    async with storage_service() as (app, address), storage_stub(address) as stub:
        await _upload(stub, b"in the store", {"name": "x"})
        response, body = await _get(app.http_port, path + "?expires=9999999999&signature=00")
        assert response.status in (400, 403, 404)
        assert b"root:" not in body and len(body) < 200
