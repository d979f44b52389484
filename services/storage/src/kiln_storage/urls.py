"""Signed, expiring download URLs for the filesystem backend's HTTP server."""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import time
from datetime import timedelta
from pathlib import Path
from urllib.parse import quote


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
    def __init__(self, key: bytes, base_url: str = "") -> None:
        self._key = key
        self.base_url = base_url.rstrip("/")

    def _mac(self, artifact_id: str, expires_at: int) -> str:
        msg = f"{artifact_id}\n{expires_at}".encode()
        return hmac.new(self._key, msg, hashlib.sha256).hexdigest()

    def url(self, artifact_id: str, filename: str, expires: timedelta) -> str:
        expires_at = int(time.time() + expires.total_seconds())
        sig = self._mac(artifact_id, expires_at)
        return (
            f"{self.base_url}/artifacts/{artifact_id}/{quote(filename)}"
            f"?expires={expires_at}&signature={sig}"
        )

    def verify(self, artifact_id: str, expires: str, signature: str) -> str | None:
        """None if the URL is good, else why not (for the log, not the client)."""
        if not expires.isdigit():
            return "no expiry"
        if int(expires) < time.time():
            return "expired"
        if not hmac.compare_digest(self._mac(artifact_id, int(expires)), signature):
            return "bad signature"
        return None
