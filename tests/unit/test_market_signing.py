"""Signed entries: JWS (Ed25519) over canonical JSON, verified offline, and
each reason a verifier refuses one."""

from __future__ import annotations

import base64
import dataclasses
import json
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from market_support import ENDORSER, endorser_ring, facts_for, public_only

from kiln_common.errors import InvalidArgument, NotFound
from kiln_market import (
    Endorser,
    Entry,
    Keyring,
    Rejected,
    SignedEntry,
    canonical,
    generate_endorser,
    new_entry,
    sign,
    verify,
)

NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)


def signed_entry(ring: Keyring, data: bytes = b"image", email: str = ENDORSER) -> SignedEntry:
    signer = ring.signer(email)
    entry = new_entry(facts_for(data), Endorser(signer.email, signer.kid), NOW, timedelta(days=1))
    return sign(entry, signer)


def rejected(document: bytes, ring: Keyring, newest: Entry | None = None) -> str:
    with pytest.raises(Rejected) as caught:
        verify(document, ring, newest)
    return caught.value.reason


def edited(document: bytes, **entry_changes: object) -> bytes:
    outer = json.loads(document)
    outer["entry"].update(entry_changes)
    return json.dumps(outer).encode()


def test_a_signed_entry_verifies_offline_with_the_public_key_only(tmp_path: Path) -> None:
    ring = endorser_ring(tmp_path)
    signed = signed_entry(ring)
    assert verify(signed.document, public_only(ring)) == signed.entry


def test_an_entry_signed_before_versions_existed_still_verifies(tmp_path: Path) -> None:
    ring = endorser_ring(tmp_path)
    signer = ring.signer(ENDORSER)
    entry = new_entry(facts_for(b"image"), Endorser(signer.email, signer.kid), NOW,
                      timedelta(days=1))  # fmt: skip
    old = entry.to_dict()
    assert "version" not in old  # signed without the field, as old documents were
    assert verify(sign(entry, signer).document, public_only(ring)).version is None


def test_a_signed_version_cannot_be_changed_or_removed(tmp_path: Path) -> None:
    ring = endorser_ring(tmp_path)
    signer = ring.signer(ENDORSER)
    facts = dataclasses.replace(facts_for(b"image"), version="1.2-7")
    entry = new_entry(facts, Endorser(signer.email, signer.kid), NOW, timedelta(days=1))
    document = sign(entry, signer).document
    assert verify(document, public_only(ring)).version == "1.2-7"
    assert rejected(edited(document, version="1.2-8"), ring) == "bad-signature"
    outer = json.loads(document)
    del outer["entry"]["version"]
    assert rejected(json.dumps(outer).encode(), ring) == "bad-signature"


def test_the_document_is_plain_json_with_a_detached_jws_over_canonical_json(tmp_path: Path) -> None:
    ring = endorser_ring(tmp_path)
    signed = signed_entry(ring)
    outer = json.loads(signed.document)
    assert set(outer) == {"entry", "protected", "signature"}
    header = json.loads(base64.urlsafe_b64decode(outer["protected"] + "=="))
    assert header == {
        "alg": "Ed25519",
        "kid": signed.entry.endorser.kid,
        "typ": "kiln-market-entry+jws",
    }
    # The signed bytes are the RFC 8785 form: key order and spacing do not matter.
    assert canonical(signed.entry).startswith(b'{"arch":"x86_64","artifact_id":')
    reordered = {"signature": outer["signature"], "entry": dict(reversed(outer["entry"].items()))}
    reordered["protected"] = outer["protected"]
    assert verify(json.dumps(reordered, indent=7).encode(), ring) == signed.entry


@pytest.mark.parametrize(
    "change",
    [
        {"title": "Something else"},
        {"deprecated": True},
        {"valid_until": "2099-01-01T00:00:00.000000Z"},
        {"locations": ["https://evil.example.org/image.qcow2"]},
    ],
)
def test_a_tampered_entry_is_rejected(tmp_path: Path, change: dict[str, object]) -> None:
    ring = endorser_ring(tmp_path)
    assert rejected(edited(signed_entry(ring).document, **change), ring) == "bad-signature"


def test_a_bad_signature_is_rejected(tmp_path: Path) -> None:
    ring = endorser_ring(tmp_path)
    outer = json.loads(signed_entry(ring).document)
    other = json.loads(signed_entry(ring, b"another image").document)
    outer["signature"] = other["signature"]
    assert rejected(json.dumps(outer).encode(), ring) == "bad-signature"


def test_an_unknown_endorser_is_rejected(tmp_path: Path) -> None:
    ring = endorser_ring(tmp_path / "a")
    stranger = endorser_ring(tmp_path / "b", "mallory@example.org")
    assert rejected(signed_entry(stranger, email="mallory@example.org").document, ring) == (
        "unknown-endorser"
    )


def test_a_known_key_claimed_for_another_email_is_rejected(tmp_path: Path) -> None:
    ring = endorser_ring(tmp_path)
    document = edited(
        signed_entry(ring).document,
        endorser={"email": "ceo@example.org", "kid": ring.signer(ENDORSER).kid},
    )
    assert rejected(document, ring) == "unknown-endorser"


def test_a_revoked_key_or_endorser_is_rejected(tmp_path: Path) -> None:
    ring = endorser_ring(tmp_path)
    signed = signed_entry(ring)
    by_key = public_only(ring)
    by_key.revoke_key(signed.entry.endorser.kid)
    assert rejected(signed.document, by_key) == "revoked"
    by_email = public_only(ring)
    by_email.revoke_endorser(ENDORSER.upper())
    assert rejected(signed.document, by_email) == "revoked"


def test_an_entry_older_than_the_newest_known_is_rejected(tmp_path: Path) -> None:
    ring = endorser_ring(tmp_path)
    first = signed_entry(ring)
    deprecated = sign(
        first.entry.successor(NOW + timedelta(hours=1), deprecated=True), ring.signer(ENDORSER)
    )
    assert verify(deprecated.document, ring, newest=first.entry).deprecated
    assert rejected(first.document, ring, newest=deprecated.entry) == "stale"
    # The newest itself, and entries about other images, still verify.
    assert verify(deprecated.document, ring, newest=deprecated.entry) == deprecated.entry
    assert verify(signed_entry(ring, b"other").document, ring, newest=deprecated.entry)


@pytest.mark.parametrize("document", [b"", b"[]", b'{"entry": {}}', b"not json"])
def test_a_malformed_document_is_rejected(tmp_path: Path, document: bytes) -> None:
    assert rejected(document, endorser_ring(tmp_path)) == "malformed"


def test_generate_endorser_writes_a_private_key_once_and_keeps_it(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "local.json"
    first = generate_endorser(path, ENDORSER)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    again = generate_endorser(path, ENDORSER)
    assert again.kid == first.kid and again.key.is_private
    assert len(first.kid) == 43  # a base64url SHA-256 thumbprint (RFC 7638)
    ring = Keyring.load(path)
    assert ring.endorsers() == [ENDORSER] and ring.signer(ENDORSER).kid == first.kid


def test_a_keyring_directory_merges_its_files_and_revocations(tmp_path: Path) -> None:
    generate_endorser(tmp_path / "a.json", "a@example.org")
    generate_endorser(tmp_path / "b.json", "b@example.org")
    (tmp_path / "revoked.json").write_text(json.dumps({"revoked_endorsers": ["B@example.org"]}))
    ring = Keyring.load(tmp_path)
    assert ring.endorsers() == ["a@example.org", "b@example.org"]
    assert ring.is_revoked("b@example.org", "any")
    with pytest.raises(Exception, match="revoked"):
        ring.signer("b@example.org")
    with pytest.raises(NotFound, match="no signing key"):
        public_only(ring).signer("a@example.org")


def test_a_bad_keyring_file_says_which_and_why(tmp_path: Path) -> None:
    (tmp_path / "bad.json").write_text(
        json.dumps({"keys": [{"kty": "OKP", "crv": "Ed25519", "x": "AA"}]})
    )
    with pytest.raises(InvalidArgument, match=r"bad\.json: every key needs an endorser email"):
        Keyring.load(tmp_path)
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(InvalidArgument, match="cannot read the keyring file"):
        Keyring.load(tmp_path)


def test_generate_endorser_in_a_keyring_directory_adds_a_file_of_its_own(tmp_path: Path) -> None:
    generate_endorser(tmp_path / "a.json", "a@example.org")
    key = generate_endorser(tmp_path, "B@example.org")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "b_at_example.org.json"]
    assert generate_endorser(tmp_path, "B@example.org").kid == key.kid
    assert Keyring.load(tmp_path).endorsers() == ["B@example.org", "a@example.org"]


def test_an_entry_signed_with_another_algorithm_is_rejected(tmp_path: Path) -> None:
    ring = endorser_ring(tmp_path)
    outer = json.loads(signed_entry(ring).document)
    header = {"alg": "HS256", "kid": outer["entry"]["endorser"]["kid"]}
    outer["protected"] = base64.urlsafe_b64encode(json.dumps(header).encode()).decode().rstrip("=")
    assert rejected(json.dumps(outer).encode(), ring) == "malformed"
