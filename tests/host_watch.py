"""Watching a directory of the build host for any touch: the planted-link tests
aim an image's links at it, and must see it never opened, read, listed,
written, created in, removed from or changed, by any process (the builder and
every tool it runs). The kernel's inotify reports each such access; a snapshot
of names, modes, owners, sizes and contents before and after catches the rest.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import select
import struct
from dataclasses import dataclass
from pathlib import Path

IN_ACCESS, IN_MODIFY, IN_ATTRIB = 0x001, 0x002, 0x004
IN_CLOSE_WRITE, IN_OPEN = 0x008, 0x020
IN_MOVED_FROM, IN_MOVED_TO, IN_CREATE, IN_DELETE = 0x040, 0x080, 0x100, 0x200
IN_DELETE_SELF, IN_MOVE_SELF, IN_ISDIR = 0x400, 0x800, 0x40000000
EVERYTHING = (
    IN_ACCESS | IN_MODIFY | IN_ATTRIB | IN_CLOSE_WRITE | IN_OPEN | IN_MOVED_FROM | IN_MOVED_TO
    | IN_CREATE | IN_DELETE | IN_DELETE_SELF | IN_MOVE_SELF
)  # fmt: skip
NAMES = {
    IN_ACCESS: "read", IN_MODIFY: "written", IN_ATTRIB: "attributes changed",
    IN_CLOSE_WRITE: "closed after writing", IN_OPEN: "opened", IN_MOVED_FROM: "moved away",
    IN_MOVED_TO: "moved in", IN_CREATE: "created", IN_DELETE: "deleted",
    IN_DELETE_SELF: "deleted", IN_MOVE_SELF: "moved",
}  # fmt: skip
_libc = ctypes.CDLL(None, use_errno=True)
_EVENT = struct.Struct("iIII")


@dataclass(frozen=True)
class Touch:
    path: str
    what: str


class HostWatch:
    """inotify watches on a directory and every directory below it."""

    def __init__(self, top: Path) -> None:
        self.fd = _libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if self.fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1")
        self.paths: dict[int, str] = {}
        for where in [top, *(p for p in top.rglob("*") if p.is_dir() and not p.is_symlink())]:
            wd = _libc.inotify_add_watch(self.fd, os.fsencode(where), EVERYTHING)
            if wd < 0:
                raise OSError(ctypes.get_errno(), f"inotify_add_watch {where}")
            self.paths[wd] = str(where)

    def touches(self) -> list[Touch]:
        """What happened since the watch began (or since the last call)."""
        found: list[Touch] = []
        while select.select([self.fd], [], [], 0)[0]:
            data = os.read(self.fd, 1 << 16)
            offset = 0
            while offset < len(data):
                wd, mask, _, length = _EVENT.unpack_from(data, offset)
                name = data[offset + 16 : offset + 16 + length].rstrip(b"\0").decode()
                offset += 16 + length
                where = os.path.join(self.paths.get(wd, "?"), name)
                for bit, what in NAMES.items():
                    if mask & bit:
                        found.append(Touch(where, what))
        return found

    def close(self) -> None:
        os.close(self.fd)


def snapshot(top: Path) -> dict[str, tuple[int, int, int, int, str]]:
    """{path: (mode, uid, gid, size, sha256 or link target)} of everything under top."""
    found = {}
    for path in [top, *sorted(top.rglob("*"))]:
        st = path.lstat()
        if path.is_symlink():
            what = os.readlink(path)
        elif path.is_file():
            what = hashlib.sha256(path.read_bytes()).hexdigest()
        else:
            what = ""
        found[str(path)] = (st.st_mode, st.st_uid, st.st_gid, st.st_size, what)
    return found
