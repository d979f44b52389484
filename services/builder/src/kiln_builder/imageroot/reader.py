"""The one way into an image's tree from the build host.

After a recipe's scripts, a package's maintainer scripts or a foreign base have
touched a tree, any path in it may be a symlink aimed at the build host:
`/etc/fstab -> /etc/shadow`, `/boot/grub -> /`, `/var/lib/dpkg/status ->
/root/.ssh/id_ed25519`. Host path calls (`open`, `Path.write_text`, `shutil`,
`os.walk`) follow such links onto the host. So every read and write the builder
makes in a tree goes through `ImageRoot` (this reader, and the writer in
root.py), which resolves paths with the kernel's `openat2(RESOLVE_IN_ROOT)`:
absolute links and `..` resolve as if the tree were `/` (as in a chroot),
race-free, in the builder's own process.

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
import errno
import fnmatch
import os
import stat
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Self

from kiln_builder.imageroot.at import MAX_DEPTH, MAX_READ, Frame, openat2, relative, split
from kiln_common.errors import FailedPrecondition


class ImageReader:
    """An image's root directory, held open for reading: every method takes an
    image path (absolute or not, always inside the tree)."""

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
        return f"{type(self).__name__}({str(self.root)!r})"

    # --- resolution -----------------------------------------------------------------

    def _open(self, path: str | PurePosixPath, flags: int, mode: int = 0) -> int:
        return openat2(self.fd, relative(path), flags, mode)

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
        parent, name = split(path)
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
        parent, name = split(path)
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
        base = PurePosixPath("/", relative(directory))
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
        stack = [Frame(PurePosixPath("/", relative(path)), top)]
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
