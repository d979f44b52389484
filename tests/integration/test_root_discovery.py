"""Root discovery, one rule in two languages: kiln_builder.rootfs as the host
runs it (base.layout.find_layout, on the base of a customised build) and
appliance/findroot.sh as the appliance runs it (sourced in bash, on a loop
device the kernel has partitioned), asked about the same real disks: GPT and
MBR tables, ext2/ext3/ext4/xfs, swap, vfat and BIOS-boot partitions, a bare
filesystem, marks that are links, and a disk with no root. Both must give the
same answer for each."""

from __future__ import annotations

import asyncio
import contextlib
import os
from dataclasses import dataclass
from pathlib import Path

import pytest

from kiln_builder import rootfs
from kiln_builder.base import formats, layout
from kiln_builder.disk import LINUX_FS
from kiln_builder.resources import loop_device, mounted, partition_devices
from kiln_common.errors import FailedPrecondition
from kiln_common.proc import run, run_sync

pytestmark = pytest.mark.integration

MiB = 1 << 20
BIOS_BOOT = "21686148-6449-6E6F-744E-656564454649"
ESP = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"


@dataclass(frozen=True)
class Part:
    size_mib: int
    fs: str  # ext2/ext3/ext4/xfs, swap, vfat, or "" (none: BIOS boot)
    files: tuple[str, ...] = ()  # regular files to create
    links: tuple[tuple[str, str], ...] = ()  # (path, target) symbolic links


# name: (table or None for a bare filesystem, partitions, the expected root: a
# partition number, 0 for the whole disk, None for none)
LAYOUTS: dict[str, tuple[str | None, tuple[Part, ...], int | None]] = {
    "gpt-bios-boot-then-ext4": (
        "gpt", (Part(1, ""), Part(48, "ext4", ("etc/os-release",))), 2,
    ),
    "mbr-swap-then-xfs": (
        "dos", (Part(16, "swap"), Part(320, "xfs", ("usr/lib/os-release",))), 2,
    ),
    "gpt-unmarked-ext4-then-ext3-with-fstab": (
        "gpt", (Part(32, "ext4", ("boot/grub/grub.cfg",)), Part(32, "ext3", ("etc/fstab",))), 2,
    ),
    "gpt-two-roots-the-first-wins": (
        "gpt", (Part(32, "ext2", ("etc/os-release",)), Part(32, "ext4", ("etc/os-release",))), 1,
    ),
    "gpt-marks-only-as-links": (
        "gpt",
        (
            Part(32, "ext4", links=(("etc/os-release", "/etc/os-release"),
                                    ("usr", "/usr"))),
            Part(32, "ext4", ("usr/lib/os-release",),
                 (("etc/os-release", "../usr/lib/os-release"),)),
        ),
        2,
    ),
    "gpt-vfat-swap-and-unmarked-ext4": (
        "gpt", (Part(16, "vfat"), Part(32, "swap"), Part(32, "ext4", ("home/x",))), None,
    ),
    "bare-ext2": (None, (Part(32, "ext2", ("etc/os-release",)),), 0),
}  # fmt: skip


def _sfdisk_script(table: str, parts: tuple[Part, ...]) -> str:
    lines = [f"label: {table}"]
    for part in parts:
        if table == "gpt":
            kind = BIOS_BOOT if not part.fs else (ESP if part.fs == "vfat" else LINUX_FS)
        else:
            kind = {"swap": "82", "vfat": "c"}.get(part.fs, "83")
        lines.append(f"size={part.size_mib}MiB, type={kind}")
    return "\n".join(lines) + "\n"


async def _fill(device: str, part: Part, where: Path) -> None:
    if not part.fs:
        return
    if part.fs == "swap":
        await run(["mkswap", device])
        return
    mkfs = {"vfat": ["mkfs.vfat"], "xfs": ["mkfs.xfs", "-q", "-f"]}.get(
        part.fs, [f"mkfs.{part.fs}", "-q", "-F"]
    )
    await run([*mkfs, device])
    if not (part.files or part.links):
        return
    async with mounted(device, where) as mnt:
        for name in part.files:
            (mnt / name).parent.mkdir(parents=True, exist_ok=True)
            (mnt / name).write_text("ID=debian\n")
        for name, target in part.links:
            (mnt / name).parent.mkdir(parents=True, exist_ok=True)
            os.symlink(target, mnt / name)


async def _make(disk: Path, table: str | None, parts: tuple[Part, ...], scratch: Path) -> None:
    size = sum(p.size_mib for p in parts) + 4
    disk.touch()
    os.truncate(disk, size * MiB)  # sparse
    if table is None:
        async with loop_device(disk) as device:
            await _fill(device, parts[0], scratch)
        return
    script = _sfdisk_script(table, parts)
    await run(["sh", "-c", 'printf "%s" "$1" | sfdisk --quiet "$2"', "sfdisk", script, disk])
    async with loop_device(disk) as device, partition_devices(device, len(parts)) as nodes:
        for node, part in zip(nodes, parts, strict=True):
            await _fill(node, part, scratch)


async def _python_answer(disk: Path) -> int | None:
    inspected = formats.inspect(disk, None, 1 << 40)
    try:
        return (await layout.find_layout(disk, inspected)).root
    except FailedPrecondition:
        return None


async def _shell_answer(disk: Path, count: int, scratch: Path) -> int | None:
    async with loop_device(disk) as device:
        # The partitions the kernel knows of (the appliance's kernel scans them itself).
        nodes = partition_devices(device, count) if count else contextlib.nullcontext()
        async with nodes:
            script = f"R={scratch}; . {rootfs.SHELL}; find_root_on {device}"
            done = run_sync(["bash", "-c", script], check=False)
    if done.returncode != 0:
        return None
    found = done.stdout.strip()
    return 0 if found == device else int(found.rsplit("p", 1)[1])


@pytest.mark.parametrize("name", sorted(LAYOUTS))
def test_python_and_the_appliances_shell_find_the_same_root(name: str, tmp_path: Path) -> None:
    table, parts, expected = LAYOUTS[name]
    disk, scratch = tmp_path / "disk.raw", tmp_path / "mnt"
    scratch.mkdir()

    async def both() -> tuple[int | None, int | None]:
        await _make(disk, table, parts, scratch)
        count = 0 if table is None else len(parts)
        return await _python_answer(disk), await _shell_answer(disk, count, scratch)

    python, shell = asyncio.run(both())
    assert python == shell == expected
    with open("/proc/self/mounts") as f:
        assert str(tmp_path) not in f.read()  # the shell left nothing mounted
