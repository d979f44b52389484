from __future__ import annotations

from datetime import timedelta
from urllib.parse import parse_qs, urlparse

from kiln_storage.urls import HmacSigner, load_or_create_key


def _parts(url: str) -> tuple[str, str, str]:
    parsed = urlparse(url)
    query = parse_qs(parsed.query)
    return parsed.path.split("/")[2], query["expires"][0], query["signature"][0]


def test_a_signed_url_verifies_and_a_tampered_one_does_not() -> None:
    signer = HmacSigner(b"k" * 32, "http://h:1/")
    url = signer.url("01m81xd1f8vz217x3gpcw23fyb", "demo.qcow2", timedelta(minutes=5))
    assert url.startswith("http://h:1/artifacts/01m81xd1f8vz217x3gpcw23fyb/demo.qcow2?")
    artifact_id, expires, sig = _parts(url)
    assert signer.verify(artifact_id, expires, sig) is None
    assert signer.verify("01m81xd1f8vz217x3gpcw23fyc", expires, sig) == "bad signature"
    assert signer.verify(artifact_id, str(int(expires) + 1), sig) == "bad signature"
    assert HmacSigner(b"x" * 32).verify(artifact_id, expires, sig) == "bad signature"


def test_an_expired_url_is_refused() -> None:
    signer = HmacSigner(b"k" * 32)
    artifact_id, expires, sig = _parts(signer.url("01m81xd1f8vz217x3gpcw23fyb", "f", timedelta(0)))
    assert signer.verify(artifact_id, str(int(expires) - 2), sig) in ("expired", "bad signature")
    assert signer.verify(artifact_id, "soon", sig) == "no expiry"


def test_the_key_is_created_once_and_kept_private(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "key"
    first = load_or_create_key(path)
    assert load_or_create_key(path) == first and len(first) == 32
    assert path.stat().st_mode & 0o777 == 0o600
