"""What a base image is, found from its bytes (never its name), and checked
before any tool opens it.

1. An outer compression (gz, bz2, xz, zst, zip) is recognised by its magic and
   removed in Python, bounded in size so a decompression bomb stops early.
2. oslo.utils' format inspector (what Glance and Nova use since the qcow2/vmdk
   data-file advisory, OSSA-2024-001) says which disk format the bytes are and
   runs its safety checks: a qcow2 with a backing file or an external data file, a
   vmdk whose descriptor names other files, and malformed headers are refused.
3. A raw file that is a bare ext2/3/4 filesystem (no partition table, no kernel:
   seed 004's images) is told apart from a partitioned disk by its superblock.

qemu-img is then given the format found here explicitly, so it never guesses.
"""

from __future__ import annotations

import bz2
import gzip
import logging
import lzma
import struct
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, BinaryIO, Literal, cast

import zstandard
from oslo_utils.imageutils import format_inspector

from kiln_common.errors import InvalidArgument

log = logging.getLogger(__name__)

TiB = 1 << 40
MAX_VIRTUAL = 2 * TiB
CHUNK = 1 << 20

Compression = Literal["gz", "bz2", "xz", "zst", "zip"]
DiskFormat = Literal["qcow2", "raw", "vmdk"]

MAGIC: dict[bytes, Compression] = {
    b"\x1f\x8b": "gz",
    b"BZh": "bz2",
    b"\xfd7zXZ\x00": "xz",
    b"\x28\xb5\x2f\xfd": "zst",
    b"PK\x03\x04": "zip",
}
# The inspector's names for what Kiln reads: "gpt" is its name for a raw disk
# with a partition table (MBR or GPT).
ACCEPTED: dict[str, DiskFormat] = {"qcow2": "qcow2", "vmdk": "vmdk", "raw": "raw", "gpt": "raw"}

EXT_MAGIC_OFFSET = 1024 + 56  # the superblock starts at 1024; s_magic is 56 bytes in
EXT_MAGIC = 0xEF53


class UnsafeImage(InvalidArgument):
    """The base image's bytes are refused before any tool reads them."""


@dataclass(frozen=True)
class Inspected:
    path: Path  # the uncompressed image
    format: DiskFormat
    virtual_size: int
    compression: Compression | None
    filesystem: str | None  # "ext3"/"ext4"/"ext2" for a bare filesystem image, else None

    @property
    def bare(self) -> bool:
        return self.filesystem is not None

    def describe(self) -> str:
        kind = f"bare {self.filesystem} filesystem" if self.bare else self.format
        outer = f", {self.compression}-compressed" if self.compression else ""
        return f"{kind}{outer}, {self.virtual_size} bytes"


def compression_of(path: Path) -> Compression | None:
    with open(path, "rb") as handle:
        head = handle.read(8)
    return next((kind for magic, kind in MAGIC.items() if head.startswith(magic)), None)


def decompress(path: Path, dest: Path, kind: Compression, max_bytes: int) -> None:
    """Writes path's content, uncompressed, to dest (sparse where it is zeros)."""
    try:
        with _opened(path, kind) as source, open(dest, "wb") as out:
            _copy_sparse(source.read, out, max_bytes, path)
    except (OSError, EOFError, lzma.LZMAError, zstandard.ZstdError, zipfile.BadZipFile) as exc:
        dest.unlink(missing_ok=True)
        raise UnsafeImage(f"the base image is not valid {kind} data: {exc}") from None
    except BaseException:
        dest.unlink(missing_ok=True)
        raise


def _opened(path: Path, kind: Compression) -> BinaryIO:
    if kind == "gz":
        return cast(BinaryIO, gzip.open(path, "rb"))
    if kind == "bz2":
        return cast(BinaryIO, bz2.open(path, "rb"))
    if kind == "xz":
        return cast(BinaryIO, lzma.open(path, "rb"))
    if kind == "zst":
        source = open(path, "rb")  # noqa: SIM115 - closed with the reader, by the caller
        reader = zstandard.ZstdDecompressor().stream_reader(source, closefd=True)
        return cast(BinaryIO, reader)
    archive = zipfile.ZipFile(path)
    members = [m for m in archive.infolist() if not m.is_dir()]
    if len(members) != 1:
        archive.close()
        names = ", ".join(m.filename for m in members[:5]) or "nothing"
        raise UnsafeImage(f"a zipped base image must hold exactly one file; it holds {names}")
    return cast(BinaryIO, archive.open(members[0]))


def _copy_sparse(read: Callable[[int], bytes], out: IO[bytes], max_bytes: int, path: Path) -> None:
    total = 0
    zero = bytes(CHUNK)
    while block := read(CHUNK):
        total += len(block)
        if total > max_bytes:
            raise UnsafeImage(
                f"the base image {path.name} uncompresses to more than {max_bytes} bytes"
            )
        if block == zero[: len(block)]:
            out.seek(len(block), 1)  # a hole: disks are mostly zeros
        else:
            out.write(block)
    out.truncate(total)


def inspect(path: Path, compression: Compression | None, max_virtual: int) -> Inspected:
    """Refuses what Kiln must not open; says what the rest is."""
    try:
        found = format_inspector.detect_file_format(str(path))
    except format_inspector.ImageFormatError as exc:
        raise UnsafeImage(f"the base image's format cannot be told: {exc}") from None
    if found is None:  # the inspector reads anything as raw at worst
        raise UnsafeImage("the base image's format cannot be told")
    name = found.NAME
    if name not in ACCEPTED:
        raise UnsafeImage(
            f"the base image is {name}: Kiln reads qcow2, raw, vmdk and bare ext3/ext4"
            " filesystem images"
        )
    try:
        found.safety_check()
    except format_inspector.SafetyCheckFailed as exc:
        reasons = "; ".join(f"{check}: {why}" for check, why in exc.failures.items())
        raise UnsafeImage(f"the base image ({name}) is refused: {reasons}") from None
    except format_inspector.ImageFormatError as exc:
        raise UnsafeImage(f"the base image ({name}) is malformed: {exc}") from None
    fmt = ACCEPTED[name]
    # A raw image's size is its length: the inspector stops reading it early.
    virtual = path.stat().st_size if fmt == "raw" else found.virtual_size
    if virtual > max_virtual:
        raise UnsafeImage(
            f"the base image's virtual size, {virtual} bytes, is more than {max_virtual}"
            " (the recipe's disk.size, or 2 TiB)"
        )
    filesystem = _bare_filesystem(path) if name == "raw" else None
    if name == "raw" and filesystem is None:
        raise UnsafeImage(
            "the base image is neither a disk image (qcow2, vmdk, raw with a partition table)"
            " nor a bare ext2/ext3/ext4 filesystem"
        )
    return Inspected(path, fmt, virtual, compression, filesystem)


def _bare_filesystem(path: Path) -> str | None:
    """ext2, ext3 or ext4 from the superblock's magic and feature flags."""
    with open(path, "rb") as handle:
        handle.seek(1024)
        block = handle.read(1024)
    if len(block) < 1024 or struct.unpack_from("<H", block, 56)[0] != EXT_MAGIC:
        return None
    compat, incompat = struct.unpack_from("<II", block, 0x5C)
    has_journal = bool(compat & 0x4)
    # extents, 64bit and flex_bg are what mkfs.ext4 sets and ext3 cannot mount.
    if incompat & (0x40 | 0x80 | 0x200):
        return "ext4"
    return "ext3" if has_journal else "ext2"


def prepare(path: Path, work: Path, max_virtual: int) -> Inspected:
    """Uncompresses (into work) if need be, then inspects."""
    kind = compression_of(path)
    if kind is None:
        return inspect(path, None, max_virtual)
    plain = work / "base.uncompressed"
    log.info("uncompressing the %s base image", kind)
    decompress(path, plain, kind, max_virtual)
    if compression_of(plain) is not None:
        plain.unlink()
        raise UnsafeImage("the base image is compressed twice: Kiln removes one layer")
    return inspect(plain, kind, max_virtual)
