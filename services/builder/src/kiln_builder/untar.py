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

What the tar can cost the host is bounded: the bytes written (the image's own
size), the members, a header's size (a long name or pax header is read whole),
the memory kept per member; sparse members, which would expand to any size, and
device nodes other than the few every /dev holds are left out.
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


MAX_HEADER = 1 << 20  # a long name or pax header; real ones are a few hundred bytes
MAX_MEMBERS = 5_000_000  # an OS tree has tens of thousands
MAX_SKIPPED = 100  # reasons kept; the rest are counted
# The device nodes a /dev holds everywhere (null, zero, full, random, urandom,
# tty, console, ptmx): anything else could open a host disk through the tree.
DEVICES = {(1, 3), (1, 5), (1, 7), (1, 8), (1, 9), (5, 0), (5, 1), (5, 2)}
_LONG = (tarfile.XHDTYPE, tarfile.XGLTYPE, tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK)


class _Bounded(tarfile.TarInfo):
    """A header tarfile would read whole (a long name, a pax header) is refused
    above MAX_HEADER, before it is read."""

    def _proc_member(self, archive: tarfile.TarFile) -> tarfile.TarInfo:
        if self.type in _LONG and self.size > MAX_HEADER:
            raise tarfile.HeaderError(f"a {self.size}-byte header")
        return super()._proc_member(archive)  # type: ignore[misc,no-any-return]


@dataclass
class Extracted:
    members: int = 0
    written: int = 0
    skipped: list[str] = field(default_factory=list)  # names refused, with why (the first)
    skipped_count: int = 0
    acls_dropped: int = 0

    def skip(self, name: str, why: str) -> None:
        self.skipped_count += 1
        if len(self.skipped) < MAX_SKIPPED:
            self.skipped.append(f"{name[:200]!r}: {why}")


@dataclass(frozen=True)
class _Dir:
    """What is set on a directory once its contents are in (not the TarInfo)."""

    path: str
    uid: int
    gid: int
    mode: int
    mtime: float
    xattrs: dict[str, bytes]


def extract(stream: BinaryIO, root: Path, max_bytes: int | None = None) -> Extracted:
    """Extracts the tar read from stream into root (an empty directory); at most
    max_bytes of file data (default: no bound)."""
    done = Extracted()
    dirs: list[_Dir] = []
    try:
        with (
            ImageRoot(root) as tree,
            tarfile.open(fileobj=stream, mode="r|", tarinfo=_Bounded) as archive,
        ):
            for member in archive:
                archive.members = []  # type: ignore[attr-defined]  # stream mode keeps every header
                done.members += 1
                if done.members > MAX_MEMBERS:
                    raise FailedPrecondition(f"the tree has more than {MAX_MEMBERS} entries")
                _one(tree, archive, member, done, dirs, max_bytes)
            for found in reversed(dirs):  # deepest first: times stay as set
                _settle_dir(tree, found)
    except (tarfile.TarError, EOFError) as exc:
        raise FailedPrecondition(
            f"the tree's tar from the appliance is unreadable: {exc}"
        ) from None
    if done.skipped_count:
        log.warning("%d entries left out of the tree: %s", done.skipped_count,
                    "; ".join(done.skipped[:10]))  # fmt: skip
    if done.acls_dropped:
        log.warning("POSIX ACLs of %d files were not kept", done.acls_dropped)
    return done


def _one(
    tree: ImageRoot, archive: tarfile.TarFile, member: tarfile.TarInfo, done: Extracted,
    dirs: list[_Dir], max_bytes: int | None,
) -> None:  # fmt: skip
    path = _path(member.name)
    if path is None:
        return done.skip(member.name, "not a path inside the tree")
    done.acls_dropped += any(k in member.pax_headers for k in _ACLS)
    if member.issparse():
        return done.skip(member.name, "a sparse file")
    if max_bytes is not None and member.isreg():
        done.written += member.size
        if done.written > max_bytes:
            raise FailedPrecondition(f"the tree holds more than {max_bytes} bytes of files")
    try:
        if member.isdir():
            tree.makedirs(path)
            dirs.append(_Dir(path, member.uid, member.gid, member.mode & 0o7777,
                             member.mtime, _xattrs(member)))  # fmt: skip
        else:
            _member(tree, archive, member, path, done)
    except FailedPrecondition as exc:  # a member in another's way
        done.skip(member.name, str(exc))
    except (OverflowError, ValueError) as exc:  # a time, id or name no file can have
        done.skip(member.name, f"a field out of range ({exc})")
    except OSError as exc:
        if exc.errno not in _MEMBER_ERRORS:
            raise  # the disk, not the member (ENOSPC, EIO)
        done.skip(member.name, exc.strerror or str(exc))


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
        return done.skip(member.name, f"the root itself is no {_kind(member)}")
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
            return done.skip(member.name, f"a hard link to {member.linkname[:200]!r}")
        tree.link(target, path)
    elif member.isfifo():
        tree.mknod(path, stat.S_IFIFO | mode)
    elif member.ischr() and (member.devmajor, member.devminor) in DEVICES:
        tree.mknod(path, stat.S_IFCHR | mode, os.makedev(member.devmajor, member.devminor))
    else:
        return done.skip(member.name, f"a {_kind(member)} is not kept")
    _owner_and_time(tree, path, member)


def _kind(member: tarfile.TarInfo) -> str:
    if member.ischr() or member.isblk():
        return f"device node {member.devmajor}:{member.devminor}"
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


def _settle_dir(tree: ImageRoot, found: _Dir) -> None:
    with (
        contextlib.suppress(OverflowError, ValueError),
        tree.directory(found.path, readable=True) as fd,
    ):
        os.fchown(fd, found.uid, found.gid)
        os.fchmod(fd, found.mode)
        for key, value in found.xattrs.items():
            with contextlib.suppress(OSError):  # a namespace this filesystem lacks
                os.setxattr(fd, key, value)
        os.utime(fd, (found.mtime, found.mtime))
