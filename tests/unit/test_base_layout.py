"""A base disk's fstab decides what is mounted below its root, and nothing in
the image can aim a mount outside it: links resolve inside the image."""

from __future__ import annotations

from pathlib import Path, PurePosixPath

from kiln_builder.base import layout
from kiln_builder.base.layout import Layout, Part
from kiln_builder.imageroot import ImageRoot

PARTS = (
    Part(1, "vfat", "AB12-CD34", "EFI", "11111111-aaaa", "esp"),
    Part(2, "ext4", "0b7c-boot", "boot", "22222222-bbbb", "boot"),
    Part(3, "ext4", "5f3a-root", "root", "33333333-cccc", "root"),
)
DISK = Layout(PARTS, 3, "ext4", "gpt")


def tree_with_fstab(tmp_path: Path, fstab: str) -> Path:
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/fstab").write_text(fstab)
    return tmp_path


def test_fstab_entries_on_this_disk_are_mounted_shallowest_first(tmp_path: Path) -> None:
    root = tree_with_fstab(
        tmp_path,
        "# comment\n"
        "UUID=5f3a-root / ext4 defaults 0 1\n"
        "PARTUUID=11111111-AAAA /boot/efi vfat umask=0077 0 1\n"
        "LABEL=boot /boot ext4 defaults 0 2\n"
        "tmpfs /tmp tmpfs defaults 0 0\n"
        "UUID=elsewhere /srv ext4 defaults 0 2\n"
        "/swapfile none swap sw 0 0\n",
    )
    assert layout._fstab_mounts(ImageRoot(root), DISK) == [
        (2, PurePosixPath("/boot"), "ext4"),
        (1, PurePosixPath("/boot/efi"), "vfat"),
    ]


def test_a_bare_filesystem_mounts_nothing_below_its_root(tmp_path: Path) -> None:
    root = tree_with_fstab(tmp_path, "LABEL=boot /boot ext4 defaults 0 2\n")
    assert layout._fstab_mounts(ImageRoot(root), Layout((), 0, "ext3", None)) == []


def test_an_fstab_linked_to_a_host_file_is_read_inside_the_image(tmp_path: Path) -> None:
    host = tmp_path / "host-fstab"
    host.write_text("LABEL=boot /boot ext4 defaults 0 2\n")
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc/fstab").symlink_to(host)  # the build host's file, by absolute path
    assert layout._fstab_mounts(ImageRoot(root), DISK) == []  # no such file inside


def test_a_mount_point_through_a_symlink_is_made_inside_the_image(tmp_path: Path) -> None:
    outside = tmp_path / "host"
    outside.mkdir()
    root = tmp_path / "root"
    root.mkdir()
    (root / "boot").symlink_to(outside)
    point = layout._mount_point(ImageRoot(root), PurePosixPath("/boot/efi"), create=True)
    assert point == root / str(outside).lstrip("/") / "efi"  # the link, followed inside
    assert not (outside / "efi").exists()


def test_a_missing_mount_point_is_made_inside_the_image(tmp_path: Path) -> None:
    point = layout._mount_point(ImageRoot(tmp_path), PurePosixPath("/boot/efi"), create=True)
    assert point == tmp_path / "boot/efi"
    assert (tmp_path / "boot/efi").is_dir()
