"""User code is not host root: the sandbox runs in a user namespace whose root
is an unprivileged host uid (IdRange.base), and sees the image's tree through
an idmapped mount, so the files it owns in the image are still owned by root
*on disk*, while the process itself holds no privilege over anything of the host.

- `user_namespace()` makes the namespace: a holder process (`unshare --user`)
  whose uid_map and gid_map the builder writes from outside ("0 BASE 65536");
  bwrap then runs inside it, as its root (`nsenter --user`).
- `idmapped()` clones the tree's mount (with what is mounted below it) and
  marks the clone with that namespace's mapping (mount_setattr(2),
  MOUNT_ATTR_IDMAP), nodev and nosuid; disk uid 0 is then the namespace's root.
  Both are context managers; a killed builder's idmapped mount lies in its
  sandbox's scratch directory, where the janitor unmounts it.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import os
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

from kiln_common.errors import FailedPrecondition
from kiln_common.proc import helper

# Syscall numbers of the new mount API: the same on every architecture.
_SYS_OPEN_TREE, _SYS_MOVE_MOUNT, _SYS_MOUNT_SETATTR = 428, 429, 442
_OPEN_TREE_CLONE, _AT_RECURSIVE, _AT_EMPTY_PATH = 1, 0x8000, 0x1000
_MOVE_MOUNT_F_EMPTY_PATH = 0x4
_MOUNT_ATTR_NOSUID, _MOUNT_ATTR_NODEV, _MOUNT_ATTR_IDMAP = 0x2, 0x4, 0x100000
_MNT_DETACH = 2
_AT_FDCWD = -100
_libc = ctypes.CDLL(None, use_errno=True)
READY_SECONDS = 10.0


class _MountAttr(ctypes.Structure):
    _fields_ = [
        ("attr_set", ctypes.c_uint64),
        ("attr_clr", ctypes.c_uint64),
        ("propagation", ctypes.c_uint64),
        ("userns_fd", ctypes.c_uint64),
    ]


@dataclass(frozen=True)
class IdRange:
    """Host uids and gids the namespace's 0..size-1 map to: unused on the host."""

    base: int = 1_000_000_000
    size: int = 65536

    def map_line(self) -> str:
        return f"0 {self.base} {self.size}\n"


DEFAULT_IDS = IdRange()


def _call(number: int, *args: object) -> int:
    result = int(_libc.syscall(number, *args))
    if result < 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))
    return result


@contextlib.asynccontextmanager
async def user_namespace(ids: IdRange) -> AsyncIterator[int]:
    """A user namespace mapping its 0..size-1 to ids.base..; yields the pid of
    the process holding it (its /proc/PID/ns/user is the namespace)."""
    argv = ["unshare", "--user", "--", "sleep", "infinity"]
    async with helper(argv, die_with_parent=True) as holder:
        await _unshared(holder.pid)
        for name in ("uid_map", "gid_map"):
            # The builder is root outside: it may map any range (no newuidmap needed).
            Path(f"/proc/{holder.pid}/{name}").write_text(ids.map_line())
        yield holder.pid


async def _unshared(pid: int) -> None:
    """Waits until pid is in a user namespace of its own (unshare has run)."""
    ours = os.stat("/proc/self/ns/user").st_ino
    for _ in range(int(READY_SECONDS / 0.01)):
        try:
            if os.stat(f"/proc/{pid}/ns/user").st_ino != ours:
                return
        except FileNotFoundError:
            break
        await asyncio.sleep(0.01)
    raise FailedPrecondition("the sandbox's user namespace could not be made (unshare --user)")


@contextlib.contextmanager
def idmapped(tree: Path, userns_pid: int, target: Path) -> Iterator[Path]:
    """The tree (and every mount below it) at target, its owners seen through
    the namespace's mapping, devices and setuid bits not honoured; unmounted on
    the way out."""
    userns = os.open(f"/proc/{userns_pid}/ns/user", os.O_RDONLY | os.O_CLOEXEC)
    try:
        clone = _call(_SYS_OPEN_TREE, _AT_FDCWD, os.fsencode(tree),
                      _OPEN_TREE_CLONE | os.O_CLOEXEC | _AT_RECURSIVE)  # fmt: skip
        try:
            attr = _MountAttr(_MOUNT_ATTR_IDMAP | _MOUNT_ATTR_NODEV | _MOUNT_ATTR_NOSUID, 0, 0,
                              userns)  # fmt: skip
            try:
                _call(_SYS_MOUNT_SETATTR, clone, b"", _AT_EMPTY_PATH | _AT_RECURSIVE,
                      ctypes.byref(attr), ctypes.sizeof(attr))  # fmt: skip
            except OSError as exc:
                raise FailedPrecondition(
                    f"the image's tree cannot be mounted idmapped for the sandbox's user"
                    f" namespace ({exc.strerror}): it needs Linux 5.12 or later and a filesystem"
                    " that supports idmapped mounts (ext4, xfs, btrfs, tmpfs)"
                ) from None
            target.mkdir(exist_ok=True)
            _call(_SYS_MOVE_MOUNT, clone, b"", _AT_FDCWD, os.fsencode(target),
                  _MOVE_MOUNT_F_EMPTY_PATH)  # fmt: skip
        finally:
            os.close(clone)
    finally:
        os.close(userns)
    try:
        yield target
    finally:
        detach(target)


def detach(target: Path) -> None:
    """Lazily unmounts target (a sandbox's processes are gone by now)."""
    if _libc.umount2(os.fsencode(target), _MNT_DETACH) != 0:
        code = ctypes.get_errno()
        if code not in (errno.EINVAL, errno.ENOENT):  # not mounted (any more)
            raise OSError(code, os.strerror(code), str(target))
