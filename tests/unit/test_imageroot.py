"""The one way into an image's tree: every path resolves inside the tree, links
planted by the image never reach the build host, and what is read is a regular
file (never a FIFO or a device node)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from kiln_builder.imageroot import ImageRoot
from kiln_common.errors import FailedPrecondition


@pytest.fixture
def host(tmp_path: Path) -> Path:
    """A directory of the build host's, outside the image, with a secret in it."""
    where = tmp_path / "host"
    where.mkdir()
    (where / "secret").write_text("HOST SECRET\n")
    return where


@pytest.fixture
def root(tmp_path: Path) -> Path:
    where = tmp_path / "image"
    (where / "etc").mkdir(parents=True)
    (where / "etc/os-release").write_text("ID=debian\n")
    return where


def test_absolute_and_dotdot_links_resolve_inside_the_tree(root: Path, host: Path) -> None:
    (root / "etc/a").symlink_to(host / "secret")
    (root / "etc/b").symlink_to("../../../../../../" + str(host / "secret"))
    (root / "etc/c").symlink_to("/etc/os-release")
    with ImageRoot(root) as tree:
        assert tree.read_text("/etc/a") is None
        assert tree.read_text("etc/b") is None
        assert tree.read_text("/etc/c") == "ID=debian\n"
        assert tree.readlink("/etc/a") == str(host / "secret")
        assert tree.is_link("/etc/a") and not tree.exists("/etc/a")


def test_a_fifo_or_a_device_node_is_never_opened(root: Path) -> None:
    os.mkfifo(root / "etc/fifo")  # opening it for reading would block the builder
    os.mknod(root / "etc/null", 0o600 | stat.S_IFCHR, os.makedev(1, 3))
    with ImageRoot(root) as tree:
        assert tree.read_bytes("/etc/fifo") is None
        assert tree.read_bytes("/etc/null") is None
        assert not tree.truncate("/etc/null")
        assert not tree.copy_out("/etc/fifo", root.parent / "out")


def test_a_write_replaces_a_link_and_never_follows_it(root: Path, host: Path) -> None:
    (root / "etc/fstab").symlink_to(host / "secret")
    with ImageRoot(root) as tree:
        tree.write("/etc/fstab", b"UUID=x / ext4 defaults 0 1\n", 0o644)
    assert (host / "secret").read_text() == "HOST SECRET\n"
    assert not (root / "etc/fstab").is_symlink()
    assert (root / "etc/fstab").read_bytes() == b"UUID=x / ext4 defaults 0 1\n"
    assert [p.name for p in (root / "etc").iterdir() if ".kiln-" in p.name] == []


def test_parents_through_a_link_to_a_host_directory_are_made_inside(root: Path, host: Path) -> None:
    (root / "etc/systemd").mkdir()
    (root / "etc/systemd/network").symlink_to(host)
    (root / "boot").symlink_to("/" + str(host).lstrip("/") + "/../boot-elsewhere")
    with ImageRoot(root) as tree:
        tree.write_text("/etc/systemd/network/80-kiln.network", "[Match]\n")
        tree.write_text("/boot/grub/grub.cfg", "set timeout=1\n")
    assert sorted(p.name for p in host.iterdir()) == ["secret"]
    inside = root / str(host).lstrip("/")
    assert (inside / "80-kiln.network").read_text() == "[Match]\n"
    assert (inside.parent / "boot-elsewhere/grub/grub.cfg").read_text() == "set timeout=1\n"


def test_a_link_loop_ends_with_an_error_not_a_hang(root: Path) -> None:
    (root / "etc/a").symlink_to("/etc/b")
    (root / "etc/b").symlink_to("a")
    with ImageRoot(root) as tree:
        assert tree.read_text("/etc/a") is None
        with pytest.raises((FailedPrecondition, OSError)):
            tree.makedirs("/etc/a/sub")


def test_removing_a_link_removes_the_link_only(root: Path, host: Path) -> None:
    (root / "var/log").mkdir(parents=True)
    (root / "var/log/journal").symlink_to(host)
    (root / "var/log/secret").symlink_to(host / "secret")
    with ImageRoot(root) as tree:
        assert tree.unlink("/var/log/secret")
        tree.rmtree("/var/log")
        assert not tree.unlink("/var/log/secret")
    assert (host / "secret").read_text() == "HOST SECRET\n"
    assert not (root / "var/log").exists()


def test_a_walk_lists_links_and_never_enters_them(root: Path, host: Path) -> None:
    (root / "etc/host").symlink_to(host)
    with ImageRoot(root) as tree:
        seen = {str(where): (dirs, files) for where, dirs, files, _ in tree.walk()}
    assert set(seen) == {"/", "/etc"}
    assert "host" in seen["/etc"][1]  # listed with the files, not walked into


def test_the_host_path_of_a_directory_has_no_link_left(root: Path, host: Path) -> None:
    (root / "mnt").symlink_to(host)
    with ImageRoot(root) as tree:
        tree.makedirs("/mnt/boot")
        found = tree.host_dir("/mnt/boot")
    assert found == root / str(host).lstrip("/") / "boot"
    assert not (host / "boot").exists()


def test_a_root_that_is_itself_a_link_is_refused(tmp_path: Path, host: Path) -> None:
    (tmp_path / "link").symlink_to(host)
    with pytest.raises(FailedPrecondition, match="cannot be opened"):
        ImageRoot(tmp_path / "link")


def test_a_hard_link_to_itself_leaves_the_file(root: Path) -> None:
    with ImageRoot(root) as tree:
        tree.link("/etc/os-release", "/etc/os-release")
        tree.link("/etc/os-release", "/etc/copy")
    assert (root / "etc/os-release").read_text() == "ID=debian\n"
    assert (root / "etc/copy").stat().st_ino == (root / "etc/os-release").stat().st_ino


def test_a_tree_deeper_than_any_image_is_refused_not_a_crash(root: Path) -> None:
    here, path = os.getcwd(), root / "deep"
    try:
        for _ in range(300):  # os.makedirs would hit PATH_MAX: one level at a time
            path.mkdir()
            os.chdir(path)
            path = Path("d")
    finally:
        os.chdir(here)
    with ImageRoot(root) as tree:
        with pytest.raises(FailedPrecondition, match="directories deep"):
            list(tree.walk())
        with pytest.raises(FailedPrecondition, match="directories deep"):
            tree.rmtree("/deep")
    shallow = root / "shallow/a/b/c"
    shallow.mkdir(parents=True)
    (shallow / "f").write_text("x")
    with ImageRoot(root) as tree:
        tree.rmtree("/shallow")
    assert not (root / "shallow").exists()
