"""Signed entries: a JWS (RFC 7515, alg Ed25519 per RFC 9864) over the RFC 8785
canonical JSON of the entry, kept detached (RFC 7515 appendix F) so the
document stays plain, readable JSON:

    {"entry": {...}, "protected": "<base64url JWS header>", "signature": "<base64url>"}

Whoever re-canonicalises "entry" gets the exact signed bytes back, so a
verifier needs only the document and the endorser's public key."""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from typing import Any

import rfc8785
from joserfc import jws
from joserfc.errors import JoseError

from kiln_common.errors import FailedPrecondition, InvalidArgument
from kiln_market.entry import Entry
from kiln_market.keys import EndorserKey, Keyring

ALGORITHM = "Ed25519"
TYPE = "kiln-market-entry+jws"


class Rejected(FailedPrecondition):
    """The document must not be trusted; reason says why, for tests and tools:
    malformed, bad-signature, unknown-endorser, revoked, stale."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class SignedEntry:
    entry: Entry
    document: bytes  # the signed JSON document, exactly as stored and served

    @property
    def identifier(self) -> str:
        return self.entry.identifier


def canonical(entry: Entry) -> bytes:
    return rfc8785.dumps(entry.to_dict())


def sign(entry: Entry, key: EndorserKey) -> SignedEntry:
    if (entry.endorser.email, entry.endorser.kid) != (key.email, key.kid):
        raise InvalidArgument("an entry is signed by the endorser it names")
    entry.check()
    header = {"alg": ALGORITHM, "kid": key.kid, "typ": TYPE}
    jose = jws.serialize_json({"protected": header}, canonical(entry), key.key, [ALGORITHM])
    document = {
        "entry": entry.to_dict(),
        "protected": jose["protected"],
        "signature": jose["signature"],
    }
    return SignedEntry(entry, json.dumps(document, indent=2, sort_keys=True).encode() + b"\n")


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _parse(document: bytes) -> tuple[Entry, str, str, dict[str, Any]]:
    try:
        outer = json.loads(document)
        protected, signature, inner = outer["protected"], outer["signature"], outer["entry"]
        header = json.loads(base64.urlsafe_b64decode(protected + "=" * (-len(protected) % 4)))
    except (ValueError, KeyError, TypeError) as exc:
        raise Rejected("malformed", f"not a signed marketplace entry: {exc}") from exc
    if not isinstance(header, dict) or not isinstance(signature, str):
        raise Rejected("malformed", "not a signed marketplace entry: bad JWS members")
    try:
        entry = Entry.from_dict(inner)
    except InvalidArgument as exc:
        raise Rejected("malformed", str(exc)) from exc
    return entry, protected, signature, header


def verify(document: bytes, keys: Keyring, newest: Entry | None = None) -> Entry:
    """The entry in document once it is proven: signed by the key it names,
    that key known and belonging to the entry's endorser, neither revoked,
    and, given the newest entry already known for the same image and endorser,
    not older than it (a replayed statement from before a deprecation).
    Offline: needs only the keyring. Raises Rejected."""
    entry, protected, signature, header = _parse(document)
    if header.get("alg") != ALGORITHM:
        raise Rejected("malformed", f"entries are signed with {ALGORITHM}, not {header.get('alg')}")
    kid = header.get("kid")
    if kid != entry.endorser.kid:
        raise Rejected("bad-signature", "the signature's key is not the entry's endorser key")
    known = keys.public(entry.endorser.kid)
    if known is None or known.email.lower() != entry.endorser.email.lower():
        raise Rejected(
            "unknown-endorser",
            f"unknown endorser {entry.endorser.email} (key {entry.endorser.kid}): "
            "add its public key to the keyring to trust it",
        )
    if keys.is_revoked(entry.endorser.email, entry.endorser.kid):
        raise Rejected("revoked", f"endorser {entry.endorser.email} or its key is revoked")
    jose = jws.FlattenedJSONSerialization(
        protected=protected, payload=_b64(canonical(entry)), signature=signature
    )
    try:
        jws.deserialize_json(jose, known.key, [ALGORITHM])
    except (JoseError, ValueError) as exc:
        raise Rejected(
            "bad-signature",
            "the entry does not match its signature: it was changed after signing, "
            "or signed with another key",
        ) from exc
    if newest is not None and _same_stream(entry, newest) and entry.sequence < newest.sequence:
        raise Rejected(
            "stale",
            f"entry {entry.identifier} #{entry.sequence} by {entry.endorser.email} is older "
            f"than the newest known (#{newest.sequence}): a replayed statement",
        )
    return entry


def _same_stream(a: Entry, b: Entry) -> bool:
    return a.identifier == b.identifier and a.endorser.email.lower() == b.endorser.email.lower()
