"""Signed, expiring download URLs for the filesystem backend's HTTP server.

A URL names the key that signed it (`kid`), so keys can be rotated: the
current key signs, and a previous one is still accepted while the URLs it
signed live (at most the longest URL lifetime), then dropped. A key is at
least MIN_KEY_BYTES long; its id is given ("ID:SECRET") or derived from it."""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
import time
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from urllib.parse import quote

MIN_KEY_BYTES = 32
_KID_RE = re.compile(r"[A-Za-z0-9_-]{1,32}")
# ASCII digits only: str.isdigit() also takes "²" (and other scripts' digits), which
# int() then refuses or reads.
_EXPIRES_RE = re.compile(r"[0-9]{1,12}")
_SIGNATURE_RE = re.compile(r"[0-9a-f]{64}")  # compare_digest refuses non-ASCII str


class BadKey(ValueError):
    """A signing key that is not usable; the message never holds the key."""


@dataclass(frozen=True)
class SigningKey:
    secret: bytes = field(repr=False)
    kid: str = ""  # default: derived from the secret

    def __post_init__(self) -> None:
        if len(self.secret) < MIN_KEY_BYTES:
            raise BadKey(f"a URL signing key is at least {MIN_KEY_BYTES} bytes long")
        if not self.kid:
            derived = "k" + hashlib.sha256(b"kiln-url-key\n" + self.secret).hexdigest()[:8]
            object.__setattr__(self, "kid", derived)
        elif not _KID_RE.fullmatch(self.kid):
            raise BadKey("a URL signing key's id is 1-32 of A-Z a-z 0-9 _ -")

    @classmethod
    def parse(cls, text: str) -> SigningKey:
        """ID:SECRET, or SECRET alone (its id derived)."""
        kid, sep, secret = text.partition(":")
        if sep and _KID_RE.fullmatch(kid):
            return cls(secret.encode(), kid)
        return cls(text.encode())


def load_or_create_key(path: Path) -> bytes:
    """A key kept beside the store so URLs survive a restart."""
    try:
        return path.read_bytes()
    except FileNotFoundError:
        key = secrets.token_bytes(32)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(key)
        return key


class HmacSigner:
    def __init__(
        self, key: SigningKey, base_url: str = "", previous: SigningKey | None = None
    ) -> None:
        self.key = key
        self._keys = {key.kid: key}
        if previous is not None:
            if previous.kid == key.kid:
                raise BadKey("the previous URL signing key has the current key's id")
            self._keys[previous.kid] = previous
        self.base_url = base_url.rstrip("/")

    @staticmethod
    def _mac(key: SigningKey, artifact_id: str, expires_at: int) -> str:
        msg = f"{artifact_id}\n{expires_at}".encode()
        return hmac.new(key.secret, msg, hashlib.sha256).hexdigest()

    def url(self, artifact_id: str, filename: str, expires: timedelta) -> str:
        expires_at = int(time.time() + expires.total_seconds())
        sig = self._mac(self.key, artifact_id, expires_at)
        return (
            f"{self.base_url}/artifacts/{artifact_id}/{quote(filename)}"
            f"?expires={expires_at}&kid={self.key.kid}&signature={sig}"
        )

    def verify(self, artifact_id: str, expires: str, signature: str, kid: str = "") -> str | None:
        """None if the URL is good, else why not (for the log, not the client).
        A URL without a kid was signed before keys had ids: the current key's."""
        if not _EXPIRES_RE.fullmatch(expires):
            return "no expiry"
        key = self._keys.get(kid or self.key.kid)
        if key is None:
            return "unknown key"
        if int(expires) < time.time():
            return "expired"
        if not _SIGNATURE_RE.fullmatch(signature):
            return "bad signature"
        if not hmac.compare_digest(self._mac(key, artifact_id, int(expires)), signature):
            return "bad signature"
        return None
