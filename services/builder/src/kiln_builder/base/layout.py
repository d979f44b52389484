"""A base image's disk: turned into a raw working copy, grown, searched for its
Linux root filesystem, and mounted with the filesystems its fstab names.

Nothing here runs code from the image: the tools (qemu-img, sfdisk, blkid,
e2fsck, resize2fs, xfs_growfs, mount) only read and write its bytes, and every
loop device and mount is held by a context manager (resources.py).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from kiln_builder.base.formats import Inspected
from kiln_builder.imageroot import ImageRoot
from kiln_builder.resources import loop_device, mounted, partition_devices
from kiln_builder.rootfs import ROOT_TYPES, holds_root
from kiln_common.errors import FailedPrecondition, InvalidArgument
from kiln_common.proc import ProcessError, run

log = logging.getLogger(__name__)

FSTAB_TYPES = (*ROOT_TYPES, "vfat")  # what is mounted below the root from its fstab
UNREADABLE = {"LVM2_member": "an LVM physical volume", "crypto_LUKS": "a LUKS encrypted volume"}


@dataclass(frozen=True)
class Part:
    number: int
    fstype: str | None
    uuid: str | None
    label: str | None
    partuuid: str | None
    partlabel: str | None

    def describe(self) -> str:
        what = UNREADABLE.get(self.fstype or "", self.fstype or "no filesystem")
        return f"partition {self.number}: {what}"


@dataclass(frozen=True)
class Layout:
    """Where the root is: partition `root` of a partitioned disk, or the whole
    file when the base is a bare filesystem (root 0, no parts)."""

    parts: tuple[Part, ...]
    root: int
    root_fs: str
    table: str | None  # "gpt", "dos" or None for a bare filesystem

    @property
    def bare(self) -> bool:
        return self.table is None


@dataclass(frozen=True)
class Attached:
    """The working copy on a loop device, its partitions as device nodes: held
    for the whole build, so the disk is attached and scanned once."""

    device: str
    nodes: dict[int, str]  # partition number -> node; {} for a bare filesystem

    def node(self, number: int) -> str:
        return self.device if number == 0 else self.nodes[number]


@contextlib.asynccontextmanager
async def attached(disk: Path, *, bare: bool) -> AsyncIterator[Attached]:
    """disk on a loop device with its partitions' nodes until the block ends
    (a bare filesystem has none)."""
    async with contextlib.AsyncExitStack() as stack:
        device = await stack.enter_async_context(loop_device(disk))
        nodes: dict[int, str] = {}
        if not bare:
            numbers = _numbers(await _table(disk))
            made = await stack.enter_async_context(partition_devices(device, 0, numbers))
            nodes = dict(zip(numbers, made, strict=True))
        yield Attached(device, nodes)


async def working_copy(base: Inspected, disk: Path) -> None:
    """A raw copy the build may write (the cached base is never written)."""
    if base.format == "raw" and base.path.parent == disk.parent:
        os.replace(base.path, disk)  # the build's own uncompressed copy: no need to copy
        return
    # The format found by the inspector, given explicitly: qemu-img never guesses.
    await run(["qemu-img", "convert", "-f", base.format, "-O", "raw", base.path, disk])


async def _table(disk: Path) -> dict[str, object]:
    result = await run(["sfdisk", "--json", disk], check=False)
    if result.returncode != 0:
        raise FailedPrecondition("the base disk has no partition table Kiln can read (GPT or MBR)")
    table: dict[str, object] = json.loads(result.stdout)["partitiontable"]
    return table


def _number(node: str) -> int:
    digits = len(node) - len(node.rstrip("0123456789"))
    return int(node[-digits:])


async def _blkid(device: str) -> dict[str, str]:
    # -p probes the bytes themselves (no cache); exit 2 means nothing was found.
    result = await run(["blkid", "-p", "-o", "export", device], check=False)
    pairs = (line.partition("=") for line in result.stdout.splitlines())
    return {key: value for key, _, value in pairs if key}


def _numbers(table: dict[str, object]) -> list[int]:
    entries = table.get("partitions") or []
    try:
        numbers = [_number(str(entry["node"])) for entry in entries]  # type: ignore[attr-defined]
    except (KeyError, TypeError, ValueError):
        raise FailedPrecondition("the base disk's partition table cannot be read") from None
    if not numbers:
        raise FailedPrecondition("the base disk's partition table is empty: no Linux root")
    return numbers


async def find_layout(
    disk: Path, base: Inspected, *, probe: bool = True, held: Attached | None = None
) -> Layout:
    """The disk's partitions and filesystems (blkid reads their bytes) and its
    root, on the attached disk (held) or one attached for the while. probe=False
    (vm isolation) mounts nothing: the root is left for the appliance to find
    (root 0), the partitions are still described."""
    if base.filesystem is not None:
        return Layout((), 0, base.filesystem, None)
    table = await _table(disk)
    numbers = _numbers(table)
    async with contextlib.AsyncExitStack() as stack:
        if held is None:
            held = await stack.enter_async_context(attached(disk, bare=False))
        parts = [await _part(number, held.node(number)) for number in numbers]
        if not probe:
            if not any(p.fstype in ROOT_TYPES for p in parts):
                raise FailedPrecondition(_no_root(parts))
            return Layout(tuple(parts), 0, "", str(table.get("label")))
        root = await _root_of(parts, held.nodes, disk.parent)
    return Layout(tuple(parts), root.number, str(root.fstype), str(table.get("label")))


async def _part(number: int, node: str) -> Part:
    found = await _blkid(node)
    return Part(number, found.get("TYPE"), found.get("UUID"), found.get("LABEL"),
                found.get("PART_ENTRY_UUID"), found.get("PART_ENTRY_NAME"))  # fmt: skip


async def _root_of(parts: list[Part], nodes: dict[int, str], work: Path) -> Part:
    """The root, by kiln_builder.rootfs's rule (the appliance's too)."""
    for part in sorted(parts, key=lambda p: p.number):
        if part.fstype not in ROOT_TYPES:
            continue
        with tempfile.TemporaryDirectory(dir=work, prefix="probe-") as probe:
            options = _ro_options(part.fstype)
            try:
                async with mounted(nodes[part.number], Path(probe), "-o", options) as mnt:
                    if holds_root(mnt):
                        return part
            except ProcessError:  # not mountable here: the rule's next candidate
                log.warning("partition %d (%s) cannot be mounted: not the root", part.number,
                            part.fstype)  # fmt: skip
    raise FailedPrecondition(_no_root(parts))


def _no_root(parts: list[Part]) -> str:
    found = "; ".join(p.describe() for p in parts)
    hint = (
        " Kiln cannot open LVM or LUKS volumes"
        if any(p.fstype in UNREADABLE for p in parts)
        else ""
    )
    return f"no Linux root filesystem (ext3, ext4 or xfs) in the base: {found}.{hint}"


def _ro_options(fstype: str | None) -> str:
    # Reading must not replay a journal, which would write the image.
    if fstype == "xfs":
        return "ro,norecovery,nouuid"
    return "ro,noload" if fstype in ("ext3", "ext4") else "ro"


def _type(fstype: str | None) -> list[str]:
    """ext2 and ext3 are mounted by the ext4 driver, which reads and writes them
    as they are: the kernel allows idmapped mounts (the sandbox's user
    namespace) of ext4-typed mounts only."""
    return ["-t", "ext4"] if fstype in ("ext2", "ext3") else []


def _rw_options(fstype: str | None) -> str:
    # nodev, nosuid: device nodes and setuid bits in an untrusted image are not
    # honoured on the host; nouuid: an
    # XFS with the same UUID may be mounted by another build on this node.
    return "nodev,nosuid,nouuid" if fstype == "xfs" else "nodev,nosuid"


# --- growing --------------------------------------------------------------------------


async def grow(
    disk: Path, layout: Layout, size: int, *, resize: bool = True, held: Attached | None = None
) -> bool:
    """Grows the raw disk to size bytes, and its root partition and filesystem
    with it (on the held loop device, told the new sizes); returns whether it
    grew. A smaller size is refused: shrinking loses data. resize=False (vm
    isolation) only makes the file bigger: the appliance grows the partition
    and filesystem, which the host does not open."""
    current = disk.stat().st_size
    if size < current:
        raise InvalidArgument(
            f"disk.size ({size} bytes) is smaller than the base image ({current} bytes):"
            " Kiln grows images, it does not shrink them"
        )
    if size == current:
        return False
    os.truncate(disk, size)
    if held is not None:  # the loop device learns the file's new size
        await run(["losetup", "--set-capacity", held.device])
    if not resize:
        return True
    if layout.bare:
        await _grow_fs(held.device if held else str(disk), layout.root_fs, disk.parent)
        return True
    if layout.root != max(p.number for p in layout.parts) or layout.table not in ("gpt", "dos"):
        raise FailedPrecondition(
            f"disk.size: the root is partition {layout.root}, not the last one;"
            " Kiln can only grow the last partition"
        )
    if layout.table == "gpt":  # the backup header moves to the new end first
        await run(["sfdisk", "--relocate", "gpt-bak-std", disk])
    await run(["sh", "-c", 'echo ", +" | sfdisk --quiet --no-reread -N "$1" "$2"',
               "sfdisk", str(layout.root), disk])  # fmt: skip
    async with contextlib.AsyncExitStack() as stack:
        if held is None:
            held = await stack.enter_async_context(attached(disk, bare=False))
        else:  # the kernel learns the root partition's new size
            await run(["partx", "--update", "--nr", str(layout.root), held.device])
        await _grow_fs(held.node(layout.root), layout.root_fs, disk.parent)
    log.info("grew the base disk from %d to %d bytes", current, size)
    return True


async def _grow_fs(device: str, fstype: str, work: Path) -> None:
    if fstype == "xfs":
        with tempfile.TemporaryDirectory(dir=work, prefix="grow-") as target:
            async with mounted(device, Path(target), "-o", "nouuid") as mnt:
                await run(["xfs_growfs", mnt])
        return
    # resize2fs wants a freshly checked filesystem; -p repairs only what is safe.
    await run(["e2fsck", "-f", "-p", device])
    await run(["resize2fs", device])


# --- mounting -------------------------------------------------------------------------


def _fstab_mounts(tree: ImageRoot, layout: Layout) -> list[tuple[int, PurePosixPath, str]]:
    """(partition, mount point, type) for each fstab line below / on this disk."""
    text = None if layout.bare else tree.read_text("/etc/fstab")
    found = []
    for line in (text or "").splitlines():
        fields = line.split()
        if len(fields) < 3 or fields[0].startswith("#"):
            continue
        spec, where, fstype = fields[:3]
        if where == "/" or not where.startswith("/") or fstype not in FSTAB_TYPES:
            continue
        number = _resolve(spec, layout)
        if number is None:
            log.warning("fstab names %s for %s: not on this disk, not mounted", spec, where)
            continue
        found.append((number, PurePosixPath(where), fstype))
    return sorted(found, key=lambda entry: len(entry[1].parts))


def _resolve(spec: str, layout: Layout) -> int | None:
    keys = {
        "UUID=": "uuid", "/dev/disk/by-uuid/": "uuid", "LABEL=": "label",
        "/dev/disk/by-label/": "label", "PARTUUID=": "partuuid",
        "/dev/disk/by-partuuid/": "partuuid", "PARTLABEL=": "partlabel",
    }  # fmt: skip
    for prefix, attribute in keys.items():
        if spec.startswith(prefix):
            value = spec.removeprefix(prefix).strip('"').lower()
            for part in layout.parts:
                if (getattr(part, attribute) or "").lower() == value:
                    return part.number
            return None
    return None


def _mount_point(tree: ImageRoot, where: PurePosixPath, *, create: bool) -> Path:
    """The host path of a directory inside the image, its links resolved inside
    the image (mount follows links on the host, so it is given a path with none)."""
    if any(part in ("..", ".") for part in where.parts):
        raise FailedPrecondition(f"fstab mount point {where} is not a plain path")
    try:
        if create:
            tree.makedirs(where)
        return tree.host_dir(where)
    except OSError as exc:
        raise FailedPrecondition(f"fstab mount point {where} is not a directory: {exc}") from None


@contextlib.asynccontextmanager
async def opened(
    held: Attached, layout: Layout, mnt: Path, *, read_only: bool = False
) -> AsyncIterator[Path]:
    """The image's root at mnt, with the partitions its fstab names mounted
    below it; everything is unmounted on the way out (the disk stays attached)."""
    async with contextlib.AsyncExitStack() as stack:
        nodes = {0: held.device, **held.nodes}
        options = _ro_options(layout.root_fs) if read_only else _rw_options(layout.root_fs)
        root = await stack.enter_async_context(
            mounted(nodes[layout.root], mnt, *_type(layout.root_fs), "-o", options)
        )
        tree = stack.enter_context(ImageRoot(root))
        for number, where, fstype in _fstab_mounts(tree, layout):
            options = _ro_options(fstype) if read_only else _rw_options(fstype)
            target = _mount_point(tree, where, create=not read_only)
            fs = _type(fstype)
            await stack.enter_async_context(mounted(nodes[number], target, *fs, "-o", options))
        yield root
