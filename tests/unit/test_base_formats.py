"""A base image is told from its bytes and refused, before any tool opens it,
when it could make a tool read the build host's files or is not what Kiln reads."""

from __future__ import annotations

import asyncio
import bz2
import gzip
import lzma
import struct
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest
import zstandard

from kiln_builder.base import formats
from kiln_builder.base.fetch import fetch_base
from kiln_builder.base.formats import UnsafeImage
from kiln_common.errors import FailedPrecondition
from kiln_common.proc import run_sync
from kiln_recipe import RecipeError
from kiln_recipe.loader import parse_recipe

MiB = 1 << 20


def ext_image(path: Path, compat: int = 0, incompat: int = 0, size: int = 4 * MiB) -> Path:
    """The bytes of an ext superblock, enough for the magic and feature flags."""
    block = bytearray(1024)
    struct.pack_into("<H", block, 56, formats.EXT_MAGIC)
    struct.pack_into("<II", block, 0x5C, compat, incompat)
    with open(path, "wb") as handle:
        handle.seek(1024)
        handle.write(block)
        handle.truncate(size)
    return path


def qemu_img(*args: str | Path) -> None:
    run_sync(["qemu-img", *args])


def test_a_bare_ext3_filesystem_is_told_from_its_superblock(tmp_path: Path) -> None:
    found = formats.inspect(ext_image(tmp_path / "fs", compat=0x4), None, 1 << 40)
    assert (found.format, found.filesystem, found.bare) == ("raw", "ext3", True)
    assert found.virtual_size == 4 * MiB


def test_ext4_features_make_it_ext4(tmp_path: Path) -> None:
    found = formats.inspect(ext_image(tmp_path / "fs", compat=0x4, incompat=0x40), None, 1 << 40)
    assert found.filesystem == "ext4"


def test_a_partitioned_raw_disk_is_a_disk_not_a_filesystem(tmp_path: Path) -> None:
    disk = tmp_path / "disk.raw"
    disk.write_bytes(b"")
    run_sync(["truncate", "-s", "8M", disk])
    run_sync(
        ["sh", "-c", 'printf "label: gpt\\nstart=2048, type=L\\n" | sfdisk -q "$1"', "sh", disk]
    )
    found = formats.inspect(disk, None, 1 << 40)
    assert (found.format, found.bare) == ("raw", False)


def test_a_qcow2_naming_a_backing_file_is_refused(tmp_path: Path) -> None:
    image = tmp_path / "evil.qcow2"
    # -u: qemu-img itself does not open the backing file while making this one.
    qemu_img("create", "-q", "-u", "-f", "qcow2", "-F", "raw", "-b", "/etc/shadow", image, "64M")
    with pytest.raises(UnsafeImage, match="backing"):
        formats.inspect(image, None, 1 << 40)


def test_a_qcow2_with_an_external_data_file_is_refused(tmp_path: Path) -> None:
    image = tmp_path / "evil.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", "-o", f"data_file={tmp_path / 'data'}", image, "64M")
    with pytest.raises(UnsafeImage, match="data"):
        formats.inspect(image, None, 1 << 40)


def test_a_vmdk_whose_descriptor_names_other_files_is_refused(tmp_path: Path) -> None:
    image = tmp_path / "flat.vmdk"
    qemu_img("create", "-q", "-f", "vmdk", "-o", "subformat=monolithicFlat", image, "16M")
    with pytest.raises(UnsafeImage):
        formats.inspect(image, None, 1 << 40)


def test_a_plain_qcow2_and_vmdk_are_read_with_their_virtual_size(tmp_path: Path) -> None:
    qemu_img("create", "-q", "-f", "qcow2", tmp_path / "a.qcow2", "3G")
    qemu_img("create", "-q", "-f", "vmdk", tmp_path / "a.vmdk", "1G")
    qcow2 = formats.inspect(tmp_path / "a.qcow2", None, 1 << 40)
    vmdk = formats.inspect(tmp_path / "a.vmdk", None, 1 << 40)
    assert (qcow2.format, qcow2.virtual_size) == ("qcow2", 3 << 30)
    assert (vmdk.format, vmdk.virtual_size) == ("vmdk", 1 << 30)


def test_a_virtual_size_beyond_the_limit_is_refused(tmp_path: Path) -> None:
    qemu_img("create", "-q", "-f", "qcow2", tmp_path / "big.qcow2", "3T")
    with pytest.raises(UnsafeImage, match="virtual size"):
        formats.inspect(tmp_path / "big.qcow2", None, formats.MAX_VIRTUAL)
    qemu_img("create", "-q", "-f", "qcow2", tmp_path / "4g.qcow2", "4G")
    with pytest.raises(UnsafeImage, match=r"disk\.size"):
        formats.inspect(tmp_path / "4g.qcow2", None, 2 << 30)


def test_bytes_of_no_supported_format_are_refused(tmp_path: Path) -> None:
    (tmp_path / "zeros").write_bytes(bytes(MiB))
    with pytest.raises(UnsafeImage, match="neither a disk image"):
        formats.inspect(tmp_path / "zeros", None, 1 << 40)
    qemu_img("create", "-q", "-f", "vpc", tmp_path / "a.vhd", "16M")
    with pytest.raises(UnsafeImage, match="vhd"):
        formats.inspect(tmp_path / "a.vhd", None, 1 << 40)


COMPRESSORS: dict[str, Callable[[bytes], bytes]] = {
    "gz": gzip.compress,
    "bz2": bz2.compress,
    "xz": lzma.compress,
    "zst": lambda data: zstandard.ZstdCompressor().compress(data),
}


@pytest.mark.parametrize("kind", [*COMPRESSORS, "zip"])
def test_each_compression_is_found_from_its_magic_and_removed(tmp_path: Path, kind: str) -> None:
    plain = ext_image(tmp_path / "plain", compat=0x4).read_bytes()
    packed = tmp_path / "base.img"  # the name says nothing: the bytes do
    if kind == "zip":
        with zipfile.ZipFile(packed, "w", zipfile.ZIP_DEFLATED) as archive:
            archive.writestr("tycoon.ext3", plain)
    else:
        packed.write_bytes(COMPRESSORS[kind](plain))
    found = formats.prepare(packed, tmp_path, 1 << 40)
    assert (found.compression, found.filesystem) == (kind, "ext3")
    assert found.path.read_bytes() == plain
    assert found.path.stat().st_blocks * 512 < len(plain)  # zeros stay holes


def test_a_zip_of_several_files_is_refused(tmp_path: Path) -> None:
    with zipfile.ZipFile(tmp_path / "two.zip", "w") as archive:
        archive.writestr("a", b"a")
        archive.writestr("b", b"b")
    with pytest.raises(UnsafeImage, match="exactly one file"):
        formats.prepare(tmp_path / "two.zip", tmp_path, 1 << 40)


def test_a_decompression_bomb_stops_at_the_limit_and_leaves_nothing(tmp_path: Path) -> None:
    (tmp_path / "bomb").write_bytes(gzip.compress(bytes(64 * MiB)))
    with pytest.raises(UnsafeImage, match="uncompresses to more than"):
        formats.prepare(tmp_path / "bomb", tmp_path, 8 * MiB)
    assert not (tmp_path / "base.uncompressed").exists()


def test_corrupt_compressed_data_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "bad").write_bytes(b"BZh9" + b"\x00" * 100)
    with pytest.raises(UnsafeImage, match="not valid bz2 data"):
        formats.prepare(tmp_path / "bad", tmp_path, 1 << 40)


# ---- the recipe's side ----------------------------------------------------------------

HEAD = (
    'name: a\nversion: "1"\nfrom:\n  image: {url: "http://images.example/a.img", sha256: "'
    + "a" * 64
    + '"}\n'
)


@pytest.mark.parametrize("field", ["filesystem: xfs", "partitioning: mbr", "boot: bios"])
def test_a_customised_image_keeps_its_own_disk_layout(field: str) -> None:

    with pytest.raises(RecipeError, match=f"disk.{field.split(':')[0]}: describes a from-scratch"):
        parse_recipe(HEAD + f"disk: {{size: 4GiB, {field}}}\n", Path("."))


def test_only_a_given_disk_size_grows_a_customised_image() -> None:

    assert parse_recipe(HEAD, Path(".")).disk_size_given() is None
    assert parse_recipe(HEAD + "disk: {size: 4GiB}\n", Path(".")).disk_size_given() == 4 << 30


@pytest.mark.parametrize(
    "source",
    [
        "{marketplace: " + "A" * 27 + "}",
        "{glance: {cloud: c, id: 3f2c1d7e-9a51-4b8e-bf1a-0c6d5e4f3a21}}",
    ],
)
def test_marketplace_and_glance_bases_need_the_publisher_service(
    source: str, tmp_path: Path
) -> None:

    recipe = parse_recipe(f'name: a\nversion: "1"\nfrom:\n  image: {source}\n', tmp_path)
    assert recipe.from_.image is not None
    with pytest.raises(FailedPrecondition, match="publisher service"):
        asyncio.run(fetch_base(recipe.from_.image, tmp_path, tmp_path, storage=None))


def test_an_artifact_base_needs_the_storage_service(tmp_path: Path) -> None:

    recipe = parse_recipe(
        'name: a\nversion: "1"\nfrom:\n  image: {artifact: 01j0abcdefghjkmnpqrstvwxyz}\n', tmp_path
    )
    assert recipe.from_.image is not None
    with pytest.raises(FailedPrecondition, match="storage service"):
        asyncio.run(fetch_base(recipe.from_.image, tmp_path, tmp_path, storage=None))
