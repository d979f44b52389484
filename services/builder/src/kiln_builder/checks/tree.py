"""Reading a finished image tree from the build host, safely.

The tree is the image's root directory. Its symlinks mean what they would mean
inside the image: `/etc/ssh/sshd_config -> /srv/ssh/sshd_config` points at the
tree's /srv, never at the host's. `Tree` is the builder's one way into a tree
(`kiln_builder.imageroot`, openat2 with RESOLVE_IN_ROOT) with what the rules
need besides: config lines without comments, and where a link points. Nothing
in the tree is ever executed."""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath

from kiln_builder.imageroot import ImageReader

MAX_READ = 4 << 20  # config files are small; a huge one is read only this far


class Tree(ImageReader):
    def resolve(self, path: str) -> Path | None:
        """The host path of an image path with every link followed inside the
        tree; None if it does not exist or a link loops. For reports and tests:
        reading goes through the file descriptors, never this path."""
        fd = self._maybe(path, os.O_PATH)
        if fd is None:
            return None
        try:
            return Path(os.readlink(f"/proc/self/fd/{fd}"))
        finally:
            os.close(fd)

    def link_target(self, path: str) -> str | None:
        """What the symlink at path says (not followed), or None."""
        return self.readlink(path)

    def read_text(self, path: str | PurePosixPath, limit: int = MAX_READ) -> str | None:
        """A regular file's text (undecodable bytes replaced), or None."""
        return super().read_text(path, limit)

    def lines(self, path: str) -> list[str]:
        """A config file's lines without comments and blanks ([] if absent)."""
        text = self.read_text(path) or ""
        out = []
        for line in text.splitlines():
            line = line.split("#", 1)[0].strip()
            if line:
                out.append(line)
        return out
