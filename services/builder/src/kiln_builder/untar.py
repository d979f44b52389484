"""A tar of an image's tree, extracted through the one way into a tree.

In `vm` mode the appliance VM hands the image's tree back to the host as a tar
written on a disk of its own: the host kernel never mounts what a recipe's code
wrote. The tar comes from a VM that ran that code as root, so it is hostile
bytes: names with `..` or a leading `/`, a member that goes through a link an
earlier member made (`etc -> /etc`, then `etc/shadow`), hard links to host
files, device nodes. Python's tarfile only parses it; every file, directory,
link and node is made with `ImageRoot`, which resolves each path inside the
tree (openat2, RESOLVE_IN_ROOT) and never follows a link at the last
component. Owners, modes, times and extended attributes (file capabilities
among them) are kept; POSIX ACLs are not (counted, and logged).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import stat
import tarfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from kiln_builder.imageroot import ImageRoot
from kiln_common.errors import FailedPrecondition

log = logging.getLogger(__name__)

CHUNK = 1 << 20
_XATTR = "SCHILY.xattr."
_ACLS = ("SCHILY.acl.access", "SCHILY.acl.default")
# What a member alone can cause: a link to nothing, a path through a file or a
# loop, a name taken by a directory.
_MEMBER_ERRORS = {errno.ENOENT, errno.ENOTDIR, errno.ELOOP, errno.EEXIST, errno.EISDIR,
                  errno.EPERM, errno.ENAMETOOLONG, errno.EXDEV}  # fmt: skip


@dataclass
class Extracted:
    members: int = 0
    skipped: list[str] = field(default_factory=list)  # names refused, with why
    acls_dropped: int = 0


def extract(stream: BinaryIO, root: Path) -> Extracted:
    """Extracts the tar read from stream into root (an empty directory)."""
    done = Extracted()
    dirs: list[tuple[str, tarfile.TarInfo]] = []
    try:
        with ImageRoot(root) as tree, tarfile.open(fileobj=stream, mode="r|") as archive:
            for member in archive:
                path = _path(member.name)
                if path is None:
                    done.skipped.append(f"{member.name[:200]!r}: not a path inside the tree")
                    continue
                done.members += 1
                done.acls_dropped += any(k in member.pax_headers for k in _ACLS)
                try:
                    if member.isdir():
                        tree.makedirs(path)
                        dirs.append((path, member))
                    else:
                        _member(tree, archive, member, path, done)
                except FailedPrecondition as exc:  # a member in another's way
                    done.skipped.append(f"{member.name[:200]!r}: {exc}")
                except OSError as exc:
                    if exc.errno not in _MEMBER_ERRORS:
                        raise  # the disk, not the member (ENOSPC, EIO)
                    done.skipped.append(f"{member.name[:200]!r}: {exc.strerror}")
            for path, member in reversed(dirs):  # deepest first: times stay as set
                _settle_dir(tree, path, member)
    except (tarfile.TarError, EOFError) as exc:
        raise FailedPrecondition(
            f"the tree's tar from the appliance is unreadable: {exc}"
        ) from None
    if done.skipped:
        log.warning("left out of the tree: %s", "; ".join(done.skipped[:10]))
    if done.acls_dropped:
        log.warning("POSIX ACLs of %d files were not kept", done.acls_dropped)
    return done


def _path(name: str) -> str | None:
    """The member's path inside the tree; None for a name with `..` (which
    could only mean to leave it) or an empty one."""
    parts = [p for p in PurePosixPath("/", name).parts[1:] if p not in ("", ".")]
    if ".." in parts:
        return None
    return "/" + "/".join(parts) if parts else "/"


def _member(
    tree: ImageRoot, archive: tarfile.TarFile, member: tarfile.TarInfo, path: str,
    done: Extracted,
) -> None:  # fmt: skip
    if path == "/":
        done.skipped.append(f"{member.name!r}: the root itself is no {_kind(member)}")
        return
    mode = member.mode & 0o7777
    if member.isreg():
        source = archive.extractfile(member)
        assert source is not None
        with tree.creating(path, mode, member.uid, member.gid, _xattrs(member), member.mtime) as fd:
            while chunk := source.read(CHUNK):
                os.write(fd, chunk)
        return
    if member.issym():
        tree.symlink(path, member.linkname)
    elif member.islnk():
        target = _path(member.linkname)
        if target is None or target == "/":
            done.skipped.append(f"{member.name!r}: a hard link to {member.linkname[:200]!r}")
            return
        tree.link(target, path)
    elif member.ischr() or member.isblk() or member.isfifo():
        kind = stat.S_IFCHR if member.ischr() else stat.S_IFBLK if member.isblk() else stat.S_IFIFO
        tree.mknod(path, kind | mode, os.makedev(member.devmajor, member.devminor))
    else:
        done.skipped.append(f"{member.name!r}: a {_kind(member)} is not kept")
        return
    _owner_and_time(tree, path, member)


def _kind(member: tarfile.TarInfo) -> str:
    return "directory" if member.isdir() else f"member of type {member.type!r}"


def _xattrs(member: tarfile.TarInfo) -> dict[str, bytes]:
    return {
        key.removeprefix(_XATTR): value.encode("utf-8", "surrogateescape")
        for key, value in member.pax_headers.items()
        if key.startswith(_XATTR)
    }


def _owner_and_time(tree: ImageRoot, path: str, member: tarfile.TarInfo) -> None:
    """A link's or node's own owner and time (never what a link names); a hard
    link's are its target's, already set."""
    if member.islnk():
        return
    parent, name = str(PurePosixPath(path).parent), PurePosixPath(path).name
    with tree.directory(parent) as parent_fd:
        os.chown(name, member.uid, member.gid, dir_fd=parent_fd, follow_symlinks=False)
        if not member.issym():
            os.chmod(name, member.mode & 0o7777, dir_fd=parent_fd)  # after chown
        os.utime(name, (member.mtime, member.mtime), dir_fd=parent_fd, follow_symlinks=False)


def _settle_dir(tree: ImageRoot, path: str, member: tarfile.TarInfo) -> None:
    with tree.opened_dir(path) as fd:
        os.fchown(fd, member.uid, member.gid)
        os.fchmod(fd, member.mode & 0o7777)
        for key, value in _xattrs(member).items():
            with contextlib.suppress(OSError):  # a namespace this filesystem lacks
                os.setxattr(fd, key, value)
        os.utime(fd, (member.mtime, member.mtime))
