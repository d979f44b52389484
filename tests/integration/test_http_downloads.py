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


@pytest.mark.parametrize(
    "expires", ["%C2%B2", "%D9%A1%D9%A2", "-1", "1e12", "+99999999999", "", "99999999999999"]
)
async def test_a_malformed_expiry_is_refused_not_a_server_error(  # type: ignore[no-untyped-def]
    storage_service, expires: str
) -> None:
    """`expires=²` passed str.isdigit() and then failed in int(): a 500."""
    async with storage_service() as (app, address), storage_stub(address) as stub:
        artifact = await _upload(stub, b"bytes", {"name": "e"})
        reply = await stub.GetDownloadUrl(pb.GetDownloadUrlRequest(id=artifact.id))
        path = reply.url[reply.url.index("/artifacts/") :]
        good = path.split("expires=")[0] + "expires=" + expires + "&" + path.split("&", 1)[1]
        response, body = await _get(app.http_port, good)
        assert response.status == 403 and b"no expiry" in body


async def test_keys_rotate_with_the_previous_key_accepted_until_it_is_dropped(  # type: ignore[no-untyped-def]
    storage_service,
) -> None:
    old, new = "one:" + "a" * 32, "two:" + "b" * 32
    async with (
        storage_service(url_signing_key=old) as (app, address),
        storage_stub(address) as stub,
    ):
        artifact = await _upload(stub, b"rotated", {"name": "r"})
        signed_by_old = (await stub.GetDownloadUrl(pb.GetDownloadUrlRequest(id=artifact.id))).url
    assert "kid=one&" in signed_by_old
    path = signed_by_old[signed_by_old.index("/artifacts/") :]
    switching = {"url_signing_key": new, "url_signing_previous_key": old}
    async with storage_service(**switching) as (app, address), storage_stub(address) as stub:
        response, body = await _get(app.http_port, path)
        assert response.status == 200 and body == b"rotated"
        fresh = (await stub.GetDownloadUrl(pb.GetDownloadUrlRequest(id=artifact.id))).url
        assert "kid=two&" in fresh
    async with storage_service(url_signing_key=new) as (app, address):
        response, body = await _get(app.http_port, path)
        assert response.status == 403 and b"unknown key" in body
        response, body = await _get(app.http_port, fresh[fresh.index("/artifacts/") :])
        assert response.status == 200


@pytest.mark.parametrize("key", ["short", "id:" + "x" * 31, "bad id!:" + "x" * 8])
async def test_a_short_signing_key_stops_the_service_without_showing_it(key: str) -> None:
    from pydantic import ValidationError

    from kiln_storage.settings import StorageSettings

    with pytest.raises(ValidationError) as caught:
        StorageSettings(url_signing_key=key)
    assert "at least 32 bytes" in str(caught.value) or "id" in str(caught.value)
