"""Writing in an image's tree: every change made relative to a directory
descriptor imageroot resolved inside the tree, the last component replaced,
never followed."""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
from collections.abc import Iterator
from pathlib import PurePosixPath

from kiln_builder.imageroot.at import MAX_LINKS, clear, lstat_at, refuse_dir, split
from kiln_builder.imageroot.reader import ImageReader
from kiln_common.errors import FailedPrecondition


class ImageRoot(ImageReader):
    """An image's root directory, held open for reading and writing."""

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
        parent, name = split(path)
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
        parent, name = split(path)
        self.makedirs(parent)
        with self.directory(parent) as parent_fd:
            existing = lstat_at(parent_fd, name)
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
        parent, name = split(path)
        self.makedirs(parent)
        with self.directory(parent) as parent_fd:
            tmp = f".{name[:200]}.kiln-{secrets.token_hex(4)}"
            os.symlink(target, tmp, dir_fd=parent_fd)
            try:
                existing = lstat_at(parent_fd, name)
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
        src_parent, src_name = split(existing)
        parent, name = split(path)
        self.makedirs(parent)
        with self.directory(src_parent) as src_fd, self.directory(parent) as parent_fd:
            refuse_dir(parent_fd, name, path)
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
        parent, name = split(path)
        self.makedirs(parent)
        with self.directory(parent) as parent_fd:
            clear(parent_fd, name, path)
            os.mknod(name, mode, device, dir_fd=parent_fd)

    def unlink(self, path: str | PurePosixPath) -> bool:
        """Removes the file or link at path (a link itself, never what it names);
        False if there was none. A directory is refused."""
        parent, name = split(path)
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
        parent, name = split(path)
        with self.directory(parent) as parent_fd:
            found = lstat_at(parent_fd, name)
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
