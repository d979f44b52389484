"""Endorser keys: Ed25519 JWKs, each naming its endorser's email, in JSON
files a Secret can hold. A file is a JWK Set extended with revocations:

    {"keys": [{"kty": "OKP", "crv": "Ed25519", "x": "...", "d": "...",
               "email": "ops@example.org"}],
     "revoked_keys": ["<kid>"], "revoked_endorsers": ["old@example.org"]}

A key with "d" can sign; one without only verifies. The key id is the key's
RFC 7638 thumbprint, whatever "kid" a file claims."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from joserfc.errors import JoseError
from joserfc.jwk import OKPKey

from kiln_common.errors import FailedPrecondition, InvalidArgument, NotFound

CURVE: Final = "Ed25519"


@dataclass(frozen=True)
class EndorserKey:
    email: str
    kid: str
    key: OKPKey  # private when this replica may sign with it


@dataclass
class Keyring:
    keys: dict[str, EndorserKey] = field(default_factory=dict)  # by kid
    revoked_keys: set[str] = field(default_factory=set)
    revoked_endorsers: set[str] = field(default_factory=set)

    def add(self, email: str, key: OKPKey) -> EndorserKey:
        if key.curve_name != CURVE:
            raise InvalidArgument(f"endorser keys are {CURVE}, not {key.curve_name}")
        kid = key.thumbprint()
        known = self.keys.get(kid)
        if known is not None and known.email != email:
            raise InvalidArgument(f"key {kid} is claimed by {known.email} and {email}")
        # A private key found anywhere wins over the same public key.
        if known is None or (key.is_private and not known.key.is_private):
            self.keys[kid] = EndorserKey(email, kid, key)
        return self.keys[kid]

    def revoke_key(self, kid: str) -> None:
        self.revoked_keys.add(kid)

    def revoke_endorser(self, email: str) -> None:
        self.revoked_endorsers.add(email.lower())

    def is_revoked(self, email: str, kid: str) -> bool:
        return kid in self.revoked_keys or email.lower() in self.revoked_endorsers

    def public(self, kid: str) -> EndorserKey | None:
        return self.keys.get(kid)

    def signer(self, email: str) -> EndorserKey:
        """The key to sign with as email: a private, unrevoked key of it."""
        if email.lower() in self.revoked_endorsers:
            raise FailedPrecondition(f"endorser {email} is revoked")
        for key in self.keys.values():
            usable = key.key.is_private and key.kid not in self.revoked_keys
            if key.email.lower() == email.lower() and usable:
                return key
        raise NotFound(f"no signing key for endorser {email}; add its key to the keyring")

    def endorsers(self) -> list[str]:
        """Emails this keyring can sign for."""
        return sorted({k.email for k in self.keys.values() if k.key.is_private})

    def merge(self, document: dict[str, Any], origin: str) -> None:
        if not isinstance(document, dict):
            raise InvalidArgument(f"{origin}: a keyring file is a JSON object")
        items = document.get("keys", [])
        if not isinstance(items, list):
            raise InvalidArgument(f"{origin}: keys is a list of JWKs")
        for item in items:
            email = item.get("email") if isinstance(item, dict) else None
            if not isinstance(email, str) or "@" not in email:
                raise InvalidArgument(f"{origin}: every key needs an endorser email")
            jwk = {k: v for k, v in item.items() if k not in ("email", "kid")}
            try:
                key = OKPKey.import_key(jwk)
            except (JoseError, ValueError, TypeError) as exc:
                raise InvalidArgument(f"{origin}: not an {CURVE} JWK: {exc}") from exc
            self.add(email, key)
        self.revoked_keys.update(_strings(document, "revoked_keys", origin))
        self.revoked_endorsers.update(
            e.lower() for e in _strings(document, "revoked_endorsers", origin)
        )

    @classmethod
    def load(cls, *paths: Path) -> Keyring:
        """The keys in each path: a keyring file, or a directory (a mounted
        Secret) whose *.json files are keyring files."""
        ring = cls()
        for file in keyring_files(*paths):
            try:
                document = json.loads(file.read_text())
            except (OSError, ValueError) as exc:
                raise InvalidArgument(f"cannot read the keyring file {file}: {exc}") from exc
            ring.merge(document, str(file))
        return ring

    def to_document(self, private: bool = False) -> dict[str, Any]:
        keys = [
            {**k.key.as_dict(private=private and k.key.is_private), "kid": k.kid, "email": k.email}
            for k in self.keys.values()
        ]
        return {
            "keys": keys,
            "revoked_keys": sorted(self.revoked_keys),
            "revoked_endorsers": sorted(self.revoked_endorsers),
        }


def keyring_files(*paths: Path) -> list[Path]:
    """The files Keyring.load reads: each path that is a file, and the *.json
    files of each that is a directory (a mounted Secret)."""
    return [f for p in paths for f in (sorted(p.glob("*.json")) if p.is_dir() else [p])]


def _strings(document: dict[str, Any], name: str, origin: str) -> list[str]:
    found = document.get(name, [])
    if not isinstance(found, list) or not all(isinstance(item, str) for item in found):
        raise InvalidArgument(f"{origin}: {name} is a list of strings")
    return found


def write_keyring(path: Path, ring: Keyring, private: bool = False) -> None:
    """Writes atomically; a file with private keys is readable by its owner only."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if private else 0o644)
    with os.fdopen(fd, "w") as out:
        json.dump(ring.to_document(private=private), out, indent=2)
        out.write("\n")
    os.replace(temporary, path)


def endorser_file(directory: Path, email: str) -> Path:
    """The file of a keyring directory that holds email's own keys."""
    return directory / f"{email.lower().replace('@', '_at_').replace('/', '_')}.json"


def generate_endorser(path: Path, email: str) -> EndorserKey:
    """The signing key of email in the keyring file at path, generated and
    written there (mode 0600) if the file has none: `kiln up`'s local endorser
    keeps its key across restarts. A directory (a keyring directory) gets
    the key in a file of its own, named for email."""
    if path.is_dir():
        ring = Keyring.load(path)
        path = endorser_file(path, email)
    else:
        ring = Keyring.load(path) if path.exists() else Keyring()
    try:
        return ring.signer(email)
    except NotFound:
        pass
    key = OKPKey.generate_key(CURVE)
    mine = Keyring.load(path) if path.exists() else Keyring()
    added = mine.add(email, key)
    write_keyring(path, mine, private=True)
    return added
