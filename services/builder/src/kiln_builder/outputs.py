"""Turns a finished build (a raw disk and its root tree) into the recipe's output files.

Each output is written under a hidden temporary name in the output directory and
renamed only once every output, its checksums and the SHA256SUMS/SHA512SUMS files
are complete: a failed or cancelled build leaves nothing behind that looks whole.
Every output but qcow2c and vmdk is reproducible: tar and filesystem images take
their timestamps from SOURCE_DATE_EPOCH, compressors store no names or times.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import secrets
import stat
import threading
import uuid
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from kiln_builder.imageroot import ImageRoot
from kiln_common import digests
from kiln_common.errors import FailedPrecondition, InvalidArgument
from kiln_common.proc import run

log = logging.getLogger(__name__)

FORMATS = frozenset({"qcow2", "qcow2c", "raw", "vmdk", "ext3", "ext4", "tar"})
TREE_FORMATS = frozenset({"ext3", "ext4", "tar"})  # made from the root tree, not the disk

# The compressor for each suffix, run in place: it writes FILE.SUFFIX and removes
# FILE only once that is complete. -f because a raw disk is compressed through a
# hard link, which the tools otherwise refuse; -n keeps gzip from storing the
# temporary name and mtime; -T0 output does not depend on the number of cores.
COMPRESSORS: dict[str, list[str]] = {
    "gz": ["gzip", "-n", "-f", "-q"],
    "bz2": ["bzip2", "-f", "-q"],
    "xz": ["xz", "-T0", "-f", "-q"],
    "zst": ["zstd", "-T0", "-f", "-q", "--rm"],
}
# The same tools as tar's filter: tar streams into them, so no uncompressed tar
# is ever written.
_TAR_FILTERS = {
    "gz": "gzip -n",
    "bz2": "bzip2",
    "xz": "xz -T0",
    "zst": "zstd -T0",
}

# -W (out-of-order writes) with 8 coroutines makes zstd-compressed qcow2 about 1.4x
# faster (42 s -> 30 s for 4.6 GB here), at the price of a cluster layout, and so a
# digest, that differs from run to run. The raw image is what reproducibility is
# checked on; the qcow2c digest is recorded, not predicted.
_QEMU_ARGS: dict[str, list[str]] = {
    "qcow2": ["-O", "qcow2"],
    "qcow2c": ["-O", "qcow2", "-c", "-o", "compression_type=zstd", "-W", "-m", "8"],
    "vmdk": ["-O", "vmdk", "-o", "subformat=streamOptimized"],
}

SUMS_FILES = {"sha256": "SHA256SUMS", "sha512": "SHA512SUMS"}


class OutputSpecLike(Protocol):
    """What write_outputs needs of one recipe output ("raw.xz": format raw, xz)."""

    @property
    def format(self) -> str: ...

    @property
    def compression(self) -> str | None: ...

    @property
    def name(self) -> str: ...


@dataclass(frozen=True)
class OutputFile:
    name: str  # the file's name in out_dir, "<stem>.<spec name>", as in SHA256SUMS
    path: Path
    format: str
    compression: str | None
    size: int
    sha256: str
    sha512: str


@dataclass(frozen=True)
class _Sources:
    disk: Path
    rootfs: Path
    source_date_epoch: int
    fs_uuid: str


async def write_outputs(
    *,
    disk: Path,
    rootfs: Path,
    specs: Sequence[OutputSpecLike],
    out_dir: Path,
    stem: str,
    source_date_epoch: int,
    fs_uuid: str,
) -> list[OutputFile]:
    """Writes out_dir/<stem>.<spec.name> for every spec, then SHA256SUMS and SHA512SUMS."""
    sources = _Sources(disk, rootfs, source_date_epoch, fs_uuid)
    _validate(specs, sources, stem)
    await asyncio.to_thread(out_dir.mkdir, parents=True, exist_ok=True)
    with ExitStack() as undo:  # unwound on any failure or cancellation
        staged = [await _stage(spec, sources, out_dir, stem, undo) for spec in specs]
        files = await asyncio.gather(
            *(_describe(spec, tmp, out_dir / f"{stem}.{spec.name}") for spec, tmp in staged)
        )
        for (_, tmp), file in zip(staged, files, strict=True):
            _publish(tmp, file.path, undo)
        for algorithm, sums_name in SUMS_FILES.items():
            _write_sums(out_dir / sums_name, files, algorithm, undo)
        undo.pop_all()  # complete: keep everything
    return files


def _validate(specs: Sequence[OutputSpecLike], sources: _Sources, stem: str) -> None:
    """Checks everything cheap before any tool runs."""
    names = [spec.name for spec in specs]
    if len(set(names)) != len(names):
        raise InvalidArgument(f"outputs: duplicate output names in {names}")
    if not stem or "/" in stem or stem.startswith("."):
        raise InvalidArgument(f"output stem {stem!r} is not a plain file name")
    for spec in specs:
        if spec.format not in FORMATS:
            raise InvalidArgument(f"outputs: unknown format {spec.format!r} in {spec.name!r}")
        if spec.compression is not None and spec.compression not in COMPRESSORS:
            raise InvalidArgument(
                f"outputs: unknown compression {spec.compression!r} in {spec.name!r}"
            )
        if not spec.name or "/" in spec.name:
            raise InvalidArgument(f"outputs: {spec.name!r} is not a plain file name")
    try:
        uuid.UUID(sources.fs_uuid)
    except ValueError as exc:
        raise InvalidArgument(f"filesystem UUID {sources.fs_uuid!r} is not a UUID") from exc
    if any(spec.format in TREE_FORMATS for spec in specs) and not sources.rootfs.is_dir():
        raise FailedPrecondition(f"root tree {sources.rootfs} is not a directory")
    if any(spec.format not in TREE_FORMATS for spec in specs) and not sources.disk.is_file():
        raise FailedPrecondition(f"disk image {sources.disk} does not exist")


async def _stage(
    spec: OutputSpecLike, src: _Sources, out_dir: Path, stem: str, undo: ExitStack
) -> tuple[OutputSpecLike, Path]:
    """Writes one output under a temporary name; returns (spec, that name)."""
    tmp = _temp_path(out_dir, f"{stem}.{spec.name}", undo)
    if spec.format == "tar":
        await _write_tar(src, tmp, spec.compression)  # compressed as it streams
    else:
        if spec.format in _QEMU_ARGS:
            await _qemu_convert(src.disk, tmp, _QEMU_ARGS[spec.format])
        elif spec.format == "raw":
            await _raw_copy(src.disk, tmp, linked=spec.compression is not None)
        else:
            await _write_filesystem(src, tmp, spec.format)
        if spec.compression is not None:
            tmp = await _compress(tmp, spec.compression, undo)
    log.info("wrote %s (%d bytes)", spec.name, tmp.stat().st_size)
    return spec, tmp


def _temp_path(out_dir: Path, name: str, undo: ExitStack) -> Path:
    """A hidden, unique name beside the final one, removed unless the build completes."""
    path = out_dir / f".{name}.{secrets.token_hex(4)}.part"
    undo.callback(path.unlink, missing_ok=True)
    return path


async def _qemu_convert(disk: Path, dest: Path, args: list[str]) -> None:
    # -f raw: never let qemu-img guess the input format from its content.
    await run(["qemu-img", "convert", "-f", "raw", *args, disk, dest])


async def _raw_copy(disk: Path, dest: Path, *, linked: bool) -> None:
    """A sparse copy of the disk. When it is about to be compressed (and so only
    read, then unlinked), a hard link saves writing gigabytes for nothing."""
    if linked:
        try:
            os.link(disk, dest)
            return
        except OSError as exc:
            if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK):
                raise
    await run(["cp", "--sparse=always", "--reflink=auto", disk, dest])


async def _compress(path: Path, compression: str, undo: ExitStack) -> Path:
    """Compresses path in place; the tool removes the uncompressed file when done."""
    result = path.with_name(f"{path.name}.{compression}")
    undo.callback(result.unlink, missing_ok=True)
    await run([*COMPRESSORS[compression], path])
    return result


async def _write_tar(src: _Sources, dest: Path, compression: str | None) -> None:
    argv = [
        "tar",
        "--create",
        f"--file={dest}",
        f"--directory={src.rootfs}",
        "--format=posix",
        "--sort=name",
        "--numeric-owner",
        f"--mtime=@{src.source_date_epoch}",
        "--clamp-mtime",
        # The default pax header names carry the pid, and atime/ctime vary per run.
        "--pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime",
        "--xattrs",
        "--xattrs-include=*",  # every namespace: security.capability matters
        "--one-file-system",  # a /proc or bind mount left in the tree is not the image
    ]
    if compression is not None:
        argv.append(f"--use-compress-program={_TAR_FILTERS[compression]}")
    await run([*argv, "."])


# A bare filesystem image is sized from the tree: its data, rounded to blocks,
# plus a fifth for metadata and growth, plus room for the journal and first use.
_BLOCK = 4096
_INODE_SIZE = 256
_FS_SLACK_BYTES = 128 << 20
_SPARE_INODES = 4096


async def _write_filesystem(src: _Sources, dest: Path, fstype: str) -> None:
    data_bytes, inodes = await asyncio.to_thread(tree_usage, src.rootfs)
    inode_count = inodes + max(inodes // 4, _SPARE_INODES)
    size = data_bytes * 6 // 5 + inode_count * _INODE_SIZE + _FS_SLACK_BYTES
    size_kib = -(-size // (1 << 20)) * 1024  # whole MiB
    epoch = str(src.source_date_epoch)
    await run(
        [
            f"mkfs.{fstype}",
            "-q",
            "-F",
            "-b",
            str(_BLOCK),
            "-I",
            str(_INODE_SIZE),
            "-N",
            str(inode_count),
            "-U",
            src.fs_uuid,
            # A fixed directory-hash seed and clock make the image reproducible.
            "-E",
            f"hash_seed={src.fs_uuid}",
            "-d",
            src.rootfs,
            dest,
            f"{size_kib}k",
        ],
        env={"E2FSPROGS_FAKE_TIME": epoch, "SOURCE_DATE_EPOCH": epoch},
    )


def tree_usage(root: Path) -> tuple[int, int]:
    """(bytes, inodes) a directory tree needs on ext2/3/4: whole blocks per file,
    hard links counted once, directories by their entries. Read inside the
    image (imageroot), links never followed."""
    linked: set[int] = set()
    data = _BLOCK  # the root directory
    inodes = 1
    with ImageRoot(root) as tree:
        for _, dirnames, filenames, dir_fd in tree.walk():
            entries = 24  # "." and ".."
            for name in (*dirnames, *filenames):
                entries += 8 + (len(os.fsencode(name)) + 3) // 4 * 4
                st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
                if st.st_nlink > 1 and not stat.S_ISDIR(st.st_mode):
                    if st.st_ino in linked:
                        continue
                    linked.add(st.st_ino)
                inodes += 1
                data += _inode_data(st)
            data += _blocks(entries) * _BLOCK
    return data, inodes


def _inode_data(st: os.stat_result) -> int:
    if stat.S_ISREG(st.st_mode):
        return _blocks(st.st_size) * _BLOCK * 1025 // 1024  # + one indirect block per 1024
    if stat.S_ISLNK(st.st_mode) and st.st_size > 59:  # shorter targets live in the inode
        return _BLOCK
    return 0


def _blocks(size: int) -> int:
    return -(-size // _BLOCK)


async def _describe(spec: OutputSpecLike, tmp: Path, final: Path) -> OutputFile:
    size, sha256, sha512 = await file_digests(tmp)
    return OutputFile(final.name, final, spec.format, spec.compression, size, sha256, sha512)


async def file_digests(path: Path) -> tuple[int, str, str]:
    """(size, sha256, sha512) of a file, read once, in a thread. A cancelled
    caller stops the thread at its next chunk rather than reading on."""
    stop = threading.Event()
    try:
        return await asyncio.to_thread(_digest_blocking, path, stop)
    finally:
        stop.set()


def _digest_blocking(path: Path, stop: threading.Event) -> tuple[int, str, str]:
    try:
        found = digests.file_digests(path, "sha256", "sha512", stop=stop)
    except digests.Stopped:
        raise asyncio.CancelledError from None
    return found.size, found.hexdigest("sha256"), found.hexdigest("sha512")


def _publish(tmp: Path, final: Path, undo: ExitStack) -> None:
    os.replace(tmp, final)
    undo.callback(final.unlink, missing_ok=True)


def _write_sums(path: Path, files: Sequence[OutputFile], algorithm: str, undo: ExitStack) -> None:
    """Writes a sha256sum/sha512sum-format file (`sha256sum -c` reads it)."""
    lines = [f"{getattr(f, algorithm)}  {f.name}\n" for f in sorted(files, key=lambda f: f.name)]
    tmp = _temp_path(path.parent, path.name, undo)
    tmp.write_text("".join(lines), encoding="utf-8")
    _publish(tmp, path, undo)
