"""File digests, streamed so a large image is never held in memory."""

from __future__ import annotations

import hashlib
from pathlib import Path

BLOCK = 4 * 1024 * 1024


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(BLOCK):
            digest.update(block)
    return digest.hexdigest()
