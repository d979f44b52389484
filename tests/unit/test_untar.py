"""The tree the appliance hands back, as a tar of hostile bytes, lands inside the
host's directory and nowhere else: links made by earlier members are not
followed out, names with `..` are left out, hard links to host files are not
made, device nodes are made but never opened; owners, modes, setuid bits and
file capabilities are kept."""

from __future__ import annotations

import io
import os
import stat
import tarfile
from pathlib import Path

import pytest

from kiln_builder.imageroot import ImageRoot
from kiln_builder.untar import extract
from kiln_common.errors import FailedPrecondition


def tar_of(*members: tuple[tarfile.TarInfo, bytes | None]) -> io.BytesIO:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for info, data in members:
            if data is not None:
                info.size = len(data)
            archive.addfile(info, io.BytesIO(data) if data is not None else None)
    out.seek(0)
    return out


def entry(name: str, kind: bytes = tarfile.REGTYPE, **fields: object) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    for key, value in fields.items():
        setattr(info, key, value)
    return info


@pytest.fixture
def host(tmp_path: Path) -> Path:
    where = tmp_path / "host"
    where.mkdir()
    (where / "shadow").write_text("HOST SECRET\n")
    return where


def test_members_through_a_planted_link_stay_inside(tmp_path: Path, host: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    stream = tar_of(
        (entry("./etc", tarfile.DIRTYPE, mode=0o755), None),
        (entry("./etc/evil", tarfile.SYMTYPE, linkname=str(host)), None),
        (entry("./etc/evil/shadow"), b"written by the VM\n"),
        (entry("../../outside"), b"x"),
        (entry("/abs/file"), b"abs\n"),
        (entry("./etc/hard", tarfile.LNKTYPE, linkname=str(host / "shadow")), None),
        (entry("./etc/up", tarfile.LNKTYPE, linkname="../../" + str(host / "shadow")), None),
    )
    done = extract(stream, root)
    assert (host / "shadow").read_text() == "HOST SECRET\n" and len(list(host.iterdir())) == 1
    inside = root / str(host).lstrip("/")
    assert (inside / "shadow").read_bytes() == b"written by the VM\n"
    assert (root / "abs/file").read_bytes() == b"abs\n"
    assert not (tmp_path / "outside").exists()
    assert (root / "etc/hard").stat().st_ino == (inside / "shadow").stat().st_ino  # inside
    assert not (root / "etc/up").exists()
    assert len(done.skipped) == 2


def test_owners_modes_capabilities_and_nodes_are_kept(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    cap = b"\x01\x00\x00\x02\x00\x20\x00\x00" + b"\x00" * 12  # cap_net_raw=ep, v2
    ping = entry("usr/bin/ping", mode=0o755, uid=0, gid=0, mtime=1_700_000_000)
    ping.pax_headers = {"SCHILY.xattr.security.capability": cap.decode("utf-8", "surrogateescape")}
    stream = tar_of(
        (entry("usr/bin/su", mode=0o4755, uid=0, gid=0, mtime=1_700_000_000), b"su"),
        (ping, b"ping"),
        (entry("home/alice", tarfile.DIRTYPE, mode=0o700, uid=1000, gid=1000, mtime=5), None),
        (entry("dev/sda", tarfile.BLKTYPE, mode=0o660, devmajor=8, devminor=0), None),
        (entry("dev/mem", tarfile.CHRTYPE, mode=0o666, devmajor=1, devminor=1), None),
        (entry("dev/null", tarfile.CHRTYPE, mode=0o666, devmajor=1, devminor=3), None),
        (entry("etc/motd", tarfile.SYMTYPE, linkname="/run/motd", uid=7, gid=7), None),
    )
    done = extract(stream, root)
    su = (root / "usr/bin/su").stat()
    assert stat.S_IMODE(su.st_mode) == 0o4755 and su.st_mtime == 1_700_000_000
    assert os.getxattr(root / "usr/bin/ping", "security.capability") == cap
    alice = (root / "home/alice").stat()
    assert (stat.S_IMODE(alice.st_mode), alice.st_uid, alice.st_gid) == (0o700, 1000, 1000)
    assert alice.st_mtime == 5  # set after its contents, deepest first
    # A host disk or memory is never made reachable; /dev/null is made, and never opened.
    assert not (root / "dev/sda").exists() and not (root / "dev/mem").exists()
    assert done.skipped_count == 2
    node = (root / "dev/null").lstat()
    assert stat.S_ISCHR(node.st_mode) and node.st_rdev == os.makedev(1, 3)
    with ImageRoot(root) as tree:
        assert tree.read_bytes("/dev/null") is None
    assert os.lstat(root / "etc/motd").st_uid == 7 and os.readlink(root / "etc/motd") == "/run/motd"


def test_what_a_hostile_tar_can_cost_is_bounded(tmp_path: Path) -> None:
    """A sparse member (1 TiB of holes in a few blocks), a header larger than
    headers are, more file bytes than allowed, and field values no file can have
    are refused; a hard link to itself leaves its file as it was."""
    root, other, third = tmp_path / "root", tmp_path / "other", tmp_path / "third"
    for where in (root, other, third):
        where.mkdir()
    sparse = entry("holes")
    sparse.pax_headers = {
        "GNU.sparse.major": "1", "GNU.sparse.minor": "0", "GNU.sparse.name": "holes",
        "GNU.sparse.realsize": str(1 << 40),
    }  # fmt: skip
    sparse_map = b"1\n" + str((1 << 40) - 1).encode() + b"\n1\n"
    stream = tar_of(
        (entry("a"), b"kept\n"),
        (entry("a", tarfile.LNKTYPE, linkname="a"), None),
        (entry("odd", mtime=1e300), b"x"),
        (sparse, sparse_map.ljust(512, b"\0") + b"z"),
    )
    done = extract(stream, root)
    assert (root / "a").read_bytes() == b"kept\n"
    assert not (root / "holes").exists() and not (root / "odd").exists()
    assert (
        done.skipped_count == 2
        and "a sparse file" in " ".join(done.skipped)
        and "a sparse file" in " ".join(done.skipped)
    )
    with pytest.raises(FailedPrecondition, match="more than 4 bytes"):
        extract(tar_of((entry("b"), b"12345")), other, max_bytes=4)
    huge = entry("x")
    huge.pax_headers = {"comment": "y" * (2 << 20)}
    with pytest.raises(FailedPrecondition, match="unreadable"):
        extract(tar_of((huge, b"")), third)
