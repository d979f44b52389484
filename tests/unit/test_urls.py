from __future__ import annotations

from datetime import timedelta
from urllib.parse import parse_qs, urlparse

import pytest

from kiln_storage.urls import BadKey, HmacSigner, SigningKey, load_or_create_key


def _parts(url: str) -> tuple[str, str, str]:
    parsed = urlparse(url)
    query = parse_qs(parsed.query)
    return parsed.path.split("/")[2], query["expires"][0], query["signature"][0]


def test_a_signed_url_verifies_and_a_tampered_one_does_not() -> None:
    signer = HmacSigner(SigningKey(b"k" * 32), "http://h:1/")
    url = signer.url("01m81xd1f8vz217x3gpcw23fyb", "demo.qcow2", timedelta(minutes=5))
    assert url.startswith("http://h:1/artifacts/01m81xd1f8vz217x3gpcw23fyb/demo.qcow2?")
    artifact_id, expires, sig = _parts(url)
    assert signer.verify(artifact_id, expires, sig) is None
    assert signer.verify("01m81xd1f8vz217x3gpcw23fyc", expires, sig) == "bad signature"
    assert signer.verify(artifact_id, str(int(expires) + 1), sig) == "bad signature"
    assert HmacSigner(SigningKey(b"x" * 32)).verify(artifact_id, expires, sig) == "bad signature"


def test_an_expired_url_is_refused() -> None:
    signer = HmacSigner(SigningKey(b"k" * 32))
    artifact_id, expires, sig = _parts(signer.url("01m81xd1f8vz217x3gpcw23fyb", "f", timedelta(0)))
    assert signer.verify(artifact_id, str(int(expires) - 2), sig) in ("expired", "bad signature")
    assert signer.verify(artifact_id, "soon", sig) == "no expiry"


def test_the_key_is_created_once_and_kept_private(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "key"
    first = load_or_create_key(path)
    assert load_or_create_key(path) == first and len(first) == 32
    assert path.stat().st_mode & 0o777 == 0o600


def test_a_key_names_itself_and_a_short_one_is_refused() -> None:
    assert SigningKey.parse("prod-2:" + "s" * 32).kid == "prod-2"
    derived = SigningKey.parse("s" * 40)
    assert derived.kid.startswith("k") and derived.secret == b"s" * 40
    assert "s" * 40 not in repr(derived)
    with pytest.raises(BadKey, match="at least 32 bytes") as caught:
        SigningKey.parse("prod-2:short-secret")
    assert "short-secret" not in str(caught.value)


def test_the_previous_key_verifies_what_it_signed_and_signs_nothing_new() -> None:
    old, new = SigningKey(b"o" * 32, "old"), SigningKey(b"n" * 32, "new")
    url = HmacSigner(old).url("01m81xd1f8vz217x3gpcw23fyb", "f", timedelta(minutes=5))
    switching = HmacSigner(new, previous=old)
    query = parse_qs(urlparse(url).query)
    args = ("01m81xd1f8vz217x3gpcw23fyb", query["expires"][0], query["signature"][0])
    assert switching.verify(*args, kid="old") is None
    assert "kid=new" in switching.url("01m81xd1f8vz217x3gpcw23fyb", "f", timedelta(minutes=5))
    assert HmacSigner(new).verify(*args, kid="old") == "unknown key"
    with pytest.raises(BadKey):
        HmacSigner(new, previous=SigningKey(b"p" * 32, "new"))


@pytest.mark.parametrize("expires", ["\u00b2", "\u0661\u0662", "-1", "1e9", " 1", "", "9" * 13])
def test_only_ascii_digits_are_an_expiry(expires: str) -> None:
    assert HmacSigner(SigningKey(b"k" * 32)).verify("a", expires, "00") == "no expiry"


@pytest.mark.parametrize("signature", ["\u00b2", "\u00e9" * 64, "", "g" * 64, "0" * 63])
def test_a_signature_that_is_not_64_hex_digits_is_refused_not_an_error(signature: str) -> None:
    signer = HmacSigner(SigningKey(b"k" * 32))
    query = parse_qs(urlparse(signer.url("a", "f", timedelta(minutes=5))).query)
    assert signer.verify("a", query["expires"][0], signature) == "bad signature"
