"""The system calls under imageroot: openat2 with RESOLVE_IN_ROOT, and the
directory-descriptor helpers the reader and the writer share."""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import stat
from pathlib import PurePosixPath

from kiln_common.errors import FailedPrecondition

_SYS_OPENAT2 = 437  # the same number on every architecture (a syscall added after 5.3)
_RESOLVE_NO_MAGICLINKS = 0x02
_RESOLVE_IN_ROOT = 0x10
MAX_LINKS = 40  # as the kernel's MAXSYMLINKS
MAX_DEPTH = 256  # directories deep: an OS tree has about 20; a walk holds an fd per level
_RETRIES = 100
MAX_READ = 64 << 20  # a file the builder reads (dpkg's status, a config) is read this far
_libc = ctypes.CDLL(None, use_errno=True)


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


def openat2(dirfd: int, path: str, flags: int, mode: int = 0) -> int:
    how = _OpenHow(flags | os.O_CLOEXEC, mode, _RESOLVE_IN_ROOT | _RESOLVE_NO_MAGICLINKS)
    for _ in range(_RETRIES):
        fd = int(_libc.syscall(_SYS_OPENAT2, dirfd, os.fsencode(path), ctypes.byref(how),
                               ctypes.sizeof(how)))  # fmt: skip
        if fd >= 0:
            return fd
        code = ctypes.get_errno()
        if code not in (errno.EAGAIN, errno.EINTR):  # EAGAIN: a rename raced the walk
            raise OSError(code, os.strerror(code), path)
    raise OSError(errno.EAGAIN, "the path kept changing while it was resolved", path)


def relative(path: str | PurePosixPath) -> str:
    """An image path ("/etc/fstab", "etc/fstab") as openat2 takes it under the root."""
    text = str(path).lstrip("/")
    return text or "."


def split(path: str | PurePosixPath) -> tuple[str, str]:
    """(parent, last component) of an image path; the root has no parent."""
    pure = PurePosixPath("/", relative(path))
    if pure == PurePosixPath("/"):
        raise FailedPrecondition("the image's root itself cannot be replaced")
    return str(pure.parent), pure.name


class Frame:
    """One directory of a walk: its fd, its entries, the subdirectories left."""

    def __init__(self, where: PurePosixPath, fd: int) -> None:
        self.where, self.fd = where, fd
        self.dirs: list[str] = []
        self.files: list[str] = []
        self.pending: list[str] | None = None

    def list(self) -> None:
        with os.scandir(self.fd) as entries:
            for entry in entries:
                real_dir = entry.is_dir(follow_symlinks=False)
                (self.dirs if real_dir else self.files).append(entry.name)

    def enter(self, name: str) -> Frame | None:
        flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            return Frame(self.where / name, os.open(name, flags, dir_fd=self.fd))
        except OSError as exc:
            if exc.errno in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP):
                return None  # gone, or replaced by a link since it was listed
            raise


def refuse_dir(dir_fd: int, name: str, path: str | PurePosixPath) -> None:
    found = lstat_at(dir_fd, name)
    if found is not None and stat.S_ISDIR(found.st_mode):
        raise FailedPrecondition(f"{path} is a directory in the image")


def clear(dir_fd: int, name: str, path: str | PurePosixPath) -> None:
    """Removes the file or link at dir_fd/name, if any; a directory is refused."""
    refuse_dir(dir_fd, name, path)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(name, dir_fd=dir_fd)


def lstat_at(dir_fd: int, name: str) -> os.stat_result | None:
    try:
        return os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None
