"""The one way into an image's tree from the build host.

After a recipe's scripts, a package's maintainer scripts or a foreign base have
touched a tree, any path in it may be a symlink aimed at the build host:
`/etc/fstab -> /etc/shadow`, `/boot/grub -> /`, `/var/lib/dpkg/status ->
/root/.ssh/id_ed25519`. Host path calls (`open`, `Path.write_text`, `shutil`,
`os.walk`) follow such links onto the host. So every read and write the builder
makes in a tree goes through `ImageRoot`, which resolves paths with the kernel's
`openat2(RESOLVE_IN_ROOT)`: absolute links and `..` resolve as if the tree were
`/` (as in a chroot), race-free, in the builder's own process.

On top of resolution, three rules:
- what is read must be a regular file (a FIFO would block, a device node planted
  in a tree would open a host disk): opened O_PATH, checked, then reopened;
- a write replaces what is at the last component (a link there is replaced, not
  followed); files are written under a temporary name and renamed into place;
- nothing is ever executed or mounted from here.

`tests/e2e/test_planted_links.py` runs whole builds under an audit hook that fails
when a builder module opens, lists or changes a path under a tree root any other way.

    with ImageRoot(rootdir) as tree:
        tree.write("/etc/fstab", b"UUID=... / ext4 defaults 0 1\\n")
        text = tree.read_text("/etc/os-release")
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fnmatch
import os
import secrets
import stat
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Self

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


def _openat2(dirfd: int, path: str, flags: int, mode: int = 0) -> int:
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


def _relative(path: str | PurePosixPath) -> str:
    """An image path ("/etc/fstab", "etc/fstab") as openat2 takes it under the root."""
    text = str(path).lstrip("/")
    return text or "."


def _split(path: str | PurePosixPath) -> tuple[str, str]:
    """(parent, last component) of an image path; the root has no parent."""
    pure = PurePosixPath("/", _relative(path))
    if pure == PurePosixPath("/"):
        raise FailedPrecondition("the image's root itself cannot be replaced")
    return str(pure.parent), pure.name


class ImageRoot:
    """An image's root directory, held open: every method takes an image path
    (absolute or not, always inside the tree)."""

    fd = -1

    def __init__(self, root: Path) -> None:
        self.root = Path(os.path.abspath(root))
        try:
            # O_NOFOLLOW: the root itself is the builder's own directory or mount
            # point, never a link the image could have made.
            self.fd = os.open(self.root, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError as exc:
            raise FailedPrecondition(f"the image's tree {root} cannot be opened: {exc}") from None

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __del__(self) -> None:
        self.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"ImageRoot({str(self.root)!r})"

    # --- resolution -----------------------------------------------------------------

    def _open(self, path: str | PurePosixPath, flags: int, mode: int = 0) -> int:
        return _openat2(self.fd, _relative(path), flags, mode)

    @contextlib.contextmanager
    def directory(self, path: str | PurePosixPath, *, readable: bool = False) -> Iterator[int]:
        """A file descriptor of the directory at path (followed inside the tree);
        readable: one to set its owner, mode, times and attributes through."""
        fd = self._open(path, (os.O_RDONLY if readable else os.O_PATH) | os.O_DIRECTORY)
        try:
            yield fd
        finally:
            os.close(fd)

    def host_dir(self, path: str | PurePosixPath) -> Path:
        """The host path of the directory at path, every link on the way resolved
        inside the tree: a path with no link left in it, for a tool that takes a
        path (mount). Valid while nothing else changes the tree, which is so when
        the builder's own code is all that runs on it."""
        with self.directory(path) as fd:
            found = Path(os.readlink(f"/proc/self/fd/{fd}"))
        real = Path(os.path.realpath(self.root))  # the kernel's own name of the root
        if found != real and not found.is_relative_to(real):
            raise FailedPrecondition(f"{path} resolved outside the image's tree")  # cannot be
        return found

    def _maybe(self, path: str | PurePosixPath, flags: int) -> int | None:
        try:
            return self._open(path, flags)
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                return None
            raise

    # --- questions ------------------------------------------------------------------

    def stat(self, path: str | PurePosixPath) -> os.stat_result | None:
        """What path leads to, links followed inside the tree; None if nothing."""
        fd = self._maybe(path, os.O_PATH)
        if fd is None:
            return None
        try:
            return os.fstat(fd)
        finally:
            os.close(fd)

    def lstat(self, path: str | PurePosixPath) -> os.stat_result | None:
        """The last component itself (a link is not followed); None if nothing."""
        parent, name = _split(path)
        fd = self._maybe(parent, os.O_PATH | os.O_DIRECTORY)
        if fd is None:
            return None
        try:
            return os.stat(name, dir_fd=fd, follow_symlinks=False)
        except (FileNotFoundError, NotADirectoryError):
            return None
        finally:
            os.close(fd)

    def exists(self, path: str | PurePosixPath) -> bool:
        return self.stat(path) is not None

    def is_file(self, path: str | PurePosixPath) -> bool:
        found = self.stat(path)
        return found is not None and stat.S_ISREG(found.st_mode)

    def is_dir(self, path: str | PurePosixPath) -> bool:
        found = self.stat(path)
        return found is not None and stat.S_ISDIR(found.st_mode)

    def is_link(self, path: str | PurePosixPath) -> bool:
        found = self.lstat(path)
        return found is not None and stat.S_ISLNK(found.st_mode)

    def readlink(self, path: str | PurePosixPath) -> str | None:
        """What the link at path says (not followed), or None if it is no link."""
        parent, name = _split(path)
        fd = self._maybe(parent, os.O_PATH | os.O_DIRECTORY)
        if fd is None:
            return None
        try:
            return os.readlink(name, dir_fd=fd)
        except OSError:
            return None
        finally:
            os.close(fd)

    def listdir(self, path: str | PurePosixPath) -> list[str]:
        """The names in a directory, sorted ([] if it is not one)."""
        fd = self._maybe(path, os.O_RDONLY | os.O_DIRECTORY)
        if fd is None:
            return []
        try:
            return sorted(os.listdir(fd))
        finally:
            os.close(fd)

    def glob(self, directory: str | PurePosixPath, pattern: str) -> list[str]:
        """Image paths of the entries of directory whose names match a shell pattern."""
        base = PurePosixPath("/", _relative(directory))
        names = self.listdir(directory)
        return [str(base / n) for n in names if fnmatch.fnmatchcase(n, pattern)]

    def walk(
        self, path: str | PurePosixPath = "/", *, topdown: bool = True
    ) -> Iterator[tuple[PurePosixPath, list[str], list[str], int]]:
        """(image directory, subdirectory names, other names, its fd) for every
        directory under path, like os.walk; a link is listed with the other
        names and never followed or entered. Iterative: an image's depth cannot
        exhaust the builder's stack."""
        top = self._open(path, os.O_RDONLY | os.O_DIRECTORY)
        stack = [_Frame(PurePosixPath("/", _relative(path)), top)]
        try:
            while stack:
                frame = stack[-1]
                if frame.pending is None:  # first visit: list it
                    frame.list()
                    if topdown:
                        yield frame.where, frame.dirs, frame.files, frame.fd
                    frame.pending = list(reversed(frame.dirs))
                if frame.pending:
                    if len(stack) >= MAX_DEPTH:
                        raise FailedPrecondition(
                            f"{frame.where} is more than {MAX_DEPTH} directories deep"
                        )
                    child = frame.enter(frame.pending.pop())
                    if child is not None:
                        stack.append(child)
                    continue
                if not topdown:
                    yield frame.where, frame.dirs, frame.files, frame.fd
                os.close(stack.pop().fd)
        finally:
            for frame in stack:
                os.close(frame.fd)

    # --- reading --------------------------------------------------------------------

    @contextlib.contextmanager
    def _regular(self, path: str | PurePosixPath, flags: int) -> Iterator[int | None]:
        """An fd of the regular file at path opened with flags; None if there is
        none. Opened O_PATH and checked before it is really opened: a FIFO or a
        device node is never opened."""
        handle = self._maybe(path, os.O_PATH)
        if handle is None:
            yield None
            return
        try:
            if not stat.S_ISREG(os.fstat(handle).st_mode):
                yield None
                return
            # Reopening the checked inode itself, through the kernel's own link.
            fd = os.open(f"/proc/self/fd/{handle}", flags | os.O_CLOEXEC | os.O_NOCTTY)
        finally:
            os.close(handle)
        try:
            yield fd
        finally:
            os.close(fd)

    def read_bytes(self, path: str | PurePosixPath, limit: int = MAX_READ) -> bytes | None:
        """A regular file's bytes (at most limit), or None if there is no such file."""
        with self._regular(path, os.O_RDONLY) as fd:
            if fd is None:
                return None
            chunks, left = [], limit
            while left > 0 and (chunk := os.read(fd, min(left, 1 << 20))):
                chunks.append(chunk)
                left -= len(chunk)
            return b"".join(chunks)

    def read_text(self, path: str | PurePosixPath, limit: int = MAX_READ) -> str | None:
        data = self.read_bytes(path, limit)
        return None if data is None else data.decode("utf-8", errors="replace")

    def copy_out(self, path: str | PurePosixPath, dest: Path) -> bool:
        """Copies the regular file at path to dest, a host path outside the
        tree; False if there is no such file."""
        with self._regular(path, os.O_RDONLY) as fd:
            if fd is None:
                return False
            with open(dest, "wb") as out:
                while chunk := os.read(fd, 1 << 20):
                    out.write(chunk)
            return True

    # --- writing --------------------------------------------------------------------

    def makedirs(self, path: str | PurePosixPath, mode: int = 0o755, _hops: int = 0) -> None:
        """Makes the directory at path and its parents, inside the tree. A link on
        the way is followed inside the tree, and the directory a dangling one names
        is made there (never on the host)."""
        if _hops > MAX_LINKS:
            raise FailedPrecondition(f"{path}: too many levels of links in the image")
        fd = self._maybe(path, os.O_PATH | os.O_DIRECTORY)
        if fd is not None:
            os.close(fd)
            return
        parent, name = _split(path)
        self.makedirs(parent, mode, _hops)
        if name in (".", ".."):
            return
        with self.directory(parent) as parent_fd:
            try:
                os.mkdir(name, mode, dir_fd=parent_fd)
                return
            except FileExistsError:
                target = self._link_at(parent_fd, name, path)
        follow = target if target.startswith("/") else f"{parent}/{target}"
        self.makedirs(follow, mode, _hops + 1)

    @staticmethod
    def _link_at(parent_fd: int, name: str, path: str | PurePosixPath) -> str:
        try:
            return os.readlink(name, dir_fd=parent_fd)
        except OSError:
            raise FailedPrecondition(
                f"{path} is in the way in the image: it is not a directory"
            ) from None

    def write(
        self,
        path: str | PurePosixPath,
        data: bytes,
        mode: int = 0o644,
        uid: int = 0,
        gid: int = 0,
    ) -> None:
        """Writes a regular file at path (parents made), replacing whatever is
        there but a directory: a temporary file beside it, renamed into place."""
        with self.creating(path, mode, uid, gid) as fd, os.fdopen(fd, "wb", closefd=False) as out:
            out.write(data)

    @contextlib.contextmanager
    def creating(
        self,
        path: str | PurePosixPath,
        mode: int = 0o644,
        uid: int = 0,
        gid: int = 0,
        xattrs: dict[str, bytes] | None = None,
        mtime: float | None = None,
    ) -> Iterator[int]:
        """An fd to write a new regular file at path through (parents made):
        written under a temporary name, renamed into place when the block ends
        without an error (replacing what was there but a directory). Owner,
        mode, then extended attributes (a chown clears file capabilities) and
        the modification time are set last."""
        parent, name = _split(path)
        self.makedirs(parent)
        with self.directory(parent) as parent_fd:
            existing = _lstat_at(parent_fd, name)
            if existing is not None and stat.S_ISDIR(existing.st_mode):
                raise FailedPrecondition(f"{path} is a directory in the image")
            tmp = f".{name[:200]}.kiln-{secrets.token_hex(4)}"
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
            fd = os.open(tmp, flags, 0o600, dir_fd=parent_fd)
            try:
                yield fd
                os.fchown(fd, uid, gid)
                os.fchmod(fd, mode)  # after chown, which clears setuid bits
                for key, value in (xattrs or {}).items():
                    with contextlib.suppress(OSError):  # a namespace this filesystem lacks
                        os.setxattr(fd, key, value)
                if mtime is not None:
                    os.utime(fd, (mtime, mtime))
                os.rename(tmp, name, src_dir_fd=parent_fd, dst_dir_fd=parent_fd)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp, dir_fd=parent_fd)
                raise
            finally:
                os.close(fd)

    def write_text(self, path: str | PurePosixPath, text: str, mode: int = 0o644) -> None:
        self.write(path, text.encode(), mode)

    def symlink(self, path: str | PurePosixPath, target: str) -> None:
        """Makes path a link to target (parents made), replacing what was there
        but a directory."""
        parent, name = _split(path)
        self.makedirs(parent)
        with self.directory(parent) as parent_fd:
            tmp = f".{name[:200]}.kiln-{secrets.token_hex(4)}"
            os.symlink(target, tmp, dir_fd=parent_fd)
            try:
                existing = _lstat_at(parent_fd, name)
                if existing is not None and stat.S_ISDIR(existing.st_mode):
                    raise FailedPrecondition(f"{path} is a directory in the image")
                os.rename(tmp, name, src_dir_fd=parent_fd, dst_dir_fd=parent_fd)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp, dir_fd=parent_fd)
                raise

    def link(self, existing: str | PurePosixPath, path: str | PurePosixPath) -> None:
        """A hard link at path to what is at existing, both inside the tree (a
        link at existing is linked itself, never followed); what was at path,
        but a directory, is replaced."""
        src_parent, src_name = _split(existing)
        parent, name = _split(path)
        self.makedirs(parent)
        with self.directory(src_parent) as src_fd, self.directory(parent) as parent_fd:
            _refuse_dir(parent_fd, name, path)
            tmp = f".{name[:200]}.kiln-{secrets.token_hex(4)}"
            os.link(src_name, tmp, src_dir_fd=src_fd, dst_dir_fd=parent_fd, follow_symlinks=False)
            try:  # a link to itself leaves the file as it was
                os.rename(tmp, name, src_dir_fd=parent_fd, dst_dir_fd=parent_fd)
            finally:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp, dir_fd=parent_fd)

    def mknod(self, path: str | PurePosixPath, mode: int, device: int = 0) -> None:
        """A device node or FIFO at path (what was there, but a directory, is
        replaced). Nothing on this side ever opens one (see _regular)."""
        parent, name = _split(path)
        self.makedirs(parent)
        with self.directory(parent) as parent_fd:
            _clear(parent_fd, name, path)
            os.mknod(name, mode, device, dir_fd=parent_fd)

    def unlink(self, path: str | PurePosixPath) -> bool:
        """Removes the file or link at path (a link itself, never what it names);
        False if there was none. A directory is refused."""
        parent, name = _split(path)
        fd = self._maybe(parent, os.O_PATH | os.O_DIRECTORY)
        if fd is None:
            return False
        try:
            os.unlink(name, dir_fd=fd)
            return True
        except FileNotFoundError:
            return False
        except IsADirectoryError:
            raise FailedPrecondition(f"{path} is a directory in the image") from None
        finally:
            os.close(fd)

    def rmtree(self, path: str | PurePosixPath) -> None:
        """Removes the directory at path and everything in it (links are removed,
        never followed); a file or link at path is just removed."""
        parent, name = _split(path)
        with self.directory(parent) as parent_fd:
            found = _lstat_at(parent_fd, name)
            if found is None:
                return
            if not stat.S_ISDIR(found.st_mode):
                os.unlink(name, dir_fd=parent_fd)
                return
            for _, dirnames, filenames, fd in self.walk(path, topdown=False):
                for entry in filenames:
                    os.unlink(entry, dir_fd=fd)
                for entry in dirnames:  # emptied already: the walk is bottom-up
                    os.rmdir(entry, dir_fd=fd)
            os.rmdir(name, dir_fd=parent_fd)

    def truncate(self, path: str | PurePosixPath) -> bool:
        """Empties the regular file at path (its inode, mode and owner kept);
        False if there is no such file."""
        with self._regular(path, os.O_WRONLY | os.O_TRUNC) as fd:
            return fd is not None

    def chmod(self, path: str | PurePosixPath, mode: int) -> None:
        with self._regular(path, os.O_RDONLY) as fd:
            if fd is None:
                raise FailedPrecondition(f"{path} is not a file in the image")
            os.fchmod(fd, mode)


class _Frame:
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

    def enter(self, name: str) -> _Frame | None:
        flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            return _Frame(self.where / name, os.open(name, flags, dir_fd=self.fd))
        except OSError as exc:
            if exc.errno in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP):
                return None  # gone, or replaced by a link since it was listed
            raise


def _refuse_dir(dir_fd: int, name: str, path: str | PurePosixPath) -> None:
    found = _lstat_at(dir_fd, name)
    if found is not None and stat.S_ISDIR(found.st_mode):
        raise FailedPrecondition(f"{path} is a directory in the image")


def _clear(dir_fd: int, name: str, path: str | PurePosixPath) -> None:
    """Removes the file or link at dir_fd/name, if any; a directory is refused."""
    _refuse_dir(dir_fd, name, path)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(name, dir_fd=dir_fd)


def _lstat_at(dir_fd: int, name: str) -> os.stat_result | None:
    try:
        return os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None
