"""Digests of byte streams: one hasher for every service (artifacts' four
checksums, outputs' and bases' SHA-256 and SHA-512), streamed so a large image
is never held in memory."""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path

BLOCK = 4 * 1024 * 1024


class Digests:
    """Several digests of one byte stream, and its size, updated chunk by chunk."""

    def __init__(self, *algorithms: str) -> None:
        self.by_alg = {alg: hashlib.new(alg) for alg in algorithms or ("sha256",)}
        self.size = 0

    def update(self, data: bytes | memoryview) -> None:
        for digest in self.by_alg.values():
            digest.update(data)
        self.size += len(data)

    def hexdigest(self, algorithm: str) -> str:
        return self.by_alg[algorithm].hexdigest()

    def hexdigests(self) -> dict[str, str]:
        return {alg: digest.hexdigest() for alg, digest in self.by_alg.items()}


class Stopped(Exception):
    """file_digests was told to stop (its caller was cancelled)."""


def file_digests(path: Path, *algorithms: str, stop: threading.Event | None = None) -> Digests:
    """The digests of a file, read once; blocking (run it in a thread). stop:
    set by a cancelled caller, it ends the read at the next block."""
    found = Digests(*algorithms)
    with open(path, "rb") as f:
        while block := f.read(BLOCK):
            if stop is not None and stop.is_set():
                raise Stopped(path)
            found.update(block)
    return found


def file_sha256(path: Path) -> str:
    return file_digests(path, "sha256").hexdigest("sha256")
