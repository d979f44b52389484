"""Layers: a step's result (the root filesystem as a tar) keyed by a hash of
the step's inputs and its parent's key, so a rebuild whose recipe changed only
in a late step redoes only the steps from there."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from kiln_common.proc import run

# GNU tar flags that keep everything an OS root needs and give the same bytes
# for the same tree.
TAR_FLAGS = ["--numeric-owner", "--xattrs", "--xattrs-include=*", "--acls", "--sort=name"]


def chain_key(parent: str, step: str, inputs: Any) -> str:
    canon = json.dumps({"parent": parent, "step": step, "inputs": inputs}, sort_keys=True)
    return hashlib.sha256(canon.encode()).hexdigest()


class LocalLayers:
    """Layers on this builder's disk. (The shared copy in the storage service
    is a later step; a local copy is always consulted first.)"""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    def path(self, step: str, key: str) -> Path:
        return self.root / f"{step}-{key}.tar"

    def has(self, step: str, key: str) -> bool:
        return self.path(step, key).is_file()

    async def save(self, step: str, key: str, rootdir: Path, epoch: int) -> Path:
        dest = self.path(step, key)
        tmp = dest.with_name(dest.name + ".partial")
        try:
            await run(
                ["tar", "-C", rootdir, *TAR_FLAGS, f"--mtime=@{epoch}", "--clamp-mtime",
                 "-cf", tmp, "."]
            )  # fmt: skip
            tmp.rename(dest)
        finally:
            tmp.unlink(missing_ok=True)
        return dest


async def extract(layer: Path, rootdir: Path) -> None:
    rootdir.mkdir(parents=True, exist_ok=True)
    await run(["tar", "-C", rootdir, *TAR_FLAGS, "--same-permissions", "-xf", layer])
