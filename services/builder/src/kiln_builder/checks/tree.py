"""Reading a finished image tree from the build host, safely.

The tree is the image's root directory. Its symlinks mean what they would mean
inside the image: `/etc/ssh/sshd_config -> /srv/ssh/sshd_config` points at the
tree's /srv, never at the host's. Every path a rule reads goes through
`Tree.resolve`, which follows links component by component as the kernel would
under a chroot (`..` at the root stays at the root), so no link in an image can
make a check read a host file. Nothing in the tree is ever executed."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from fnmatch import fnmatchcase
from pathlib import Path, PurePosixPath

MAX_LINKS = 40  # as the kernel's MAXSYMLINKS: a loop of links ends here
MAX_READ = 4 << 20  # config files are small; a huge one is read only this far


class Tree:
    def __init__(self, root: Path) -> None:
        self.root = Path(os.path.abspath(root))

    def resolve(self, path: str) -> Path | None:
        """The host path of an absolute image path with every symlink followed
        inside the tree; None if it does not exist or a link loops."""
        parts = [p for p in PurePosixPath(path).parts if p != "/"]
        inside: list[str] = []  # the resolved components so far, all real directories
        hops = 0
        while parts:
            part = parts.pop(0)
            if part in ("", "."):
                continue
            if part == "..":
                if inside:
                    inside.pop()
                continue
            host = self.root.joinpath(*inside, part)
            try:
                mode = os.lstat(host).st_mode
            except OSError:
                return None
            if not stat.S_ISLNK(mode):
                inside.append(part)
                continue
            hops += 1
            if hops > MAX_LINKS:
                return None
            target = os.readlink(host)
            if target.startswith("/"):
                inside = []  # absolute: from the image's root, not the host's
            parts = [p for p in PurePosixPath(target).parts if p != "/"] + parts
        return self.root.joinpath(*inside)

    def exists(self, path: str) -> bool:
        return self.resolve(path) is not None

    def is_file(self, path: str) -> bool:
        host = self.resolve(path)
        return host is not None and stat.S_ISREG(os.lstat(host).st_mode)

    def is_dir(self, path: str) -> bool:
        host = self.resolve(path)
        return host is not None and stat.S_ISDIR(os.lstat(host).st_mode)

    def is_link(self, path: str) -> bool:
        """Whether the last component itself is a symlink (its parents resolved)."""
        parent = self.resolve(str(PurePosixPath(path).parent))
        return parent is not None and os.path.islink(parent / PurePosixPath(path).name)

    def link_target(self, path: str) -> str | None:
        """What the symlink at path says (not followed), or None."""
        parent = self.resolve(str(PurePosixPath(path).parent))
        if parent is None:
            return None
        host = parent / PurePosixPath(path).name
        return os.readlink(host) if os.path.islink(host) else None

    def read_text(self, path: str) -> str | None:
        """A regular file's text (undecodable bytes replaced), or None."""
        host = self.resolve(path)
        if host is None or not stat.S_ISREG(os.lstat(host).st_mode):
            return None
        # O_NOFOLLOW: resolve() left no link in the path; refuse one appearing since.
        fd = os.open(host, os.O_RDONLY | os.O_NOFOLLOW)
        with os.fdopen(fd, "rb") as handle:
            return handle.read(MAX_READ).decode("utf-8", errors="replace")

    def lines(self, path: str) -> list[str]:
        """A config file's lines without comments and blanks ([] if absent)."""
        text = self.read_text(path) or ""
        out = []
        for line in text.splitlines():
            line = line.split("#", 1)[0].strip()
            if line:
                out.append(line)
        return out

    def listdir(self, path: str) -> list[str]:
        """The names in a directory, sorted ([] if it is not one)."""
        host = self.resolve(path)
        if host is None or not stat.S_ISDIR(os.lstat(host).st_mode):
            return []
        return sorted(os.listdir(host))

    def glob(self, directory: str, pattern: str) -> Iterator[str]:
        """Image paths of the entries of directory matching a shell pattern."""
        for name in self.listdir(directory):
            if fnmatchcase(name, pattern):
                yield str(PurePosixPath(directory) / name)
