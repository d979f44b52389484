"""Disk assembly: partition table, root filesystem written straight into its
partition's byte range from the root directory (no mount), then GRUB for BIOS
boot through a loop device. Also the boot configuration the image needs:
fstab by UUID, serial console, DHCP on any NIC, root grown on first boot."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import uuid
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from kiln_builder.imageroot import ImageRoot
from kiln_builder.resources import loop_device, mounted, partition_devices
from kiln_common.errors import FailedPrecondition
from kiln_common.proc import run

log = logging.getLogger(__name__)

SECTOR = 512
MiB = 1024 * 1024
BIOS_BOOT = "21686148-6E6F-744E-6565-644546494649"
LINUX_FS = "0FC63DAF-8483-4772-8E79-3D69D8477DE4"
KILN_NS = uuid.UUID("6b696c6e-0000-4000-8000-6b696c6e0001")  # names derived UUIDs

GROWROOT_SH = """#!/bin/sh
# Kiln: grow the root partition and filesystem to the whole disk. Idempotent:
# it runs at every boot, so a disk enlarged later is used too.
set -eu
dev=$(findmnt -no SOURCE /)
disk=/dev/$(lsblk -no PKNAME "$dev")
part=$(cat /sys/class/block/$(basename "$dev")/partition)
growpart "$disk" "$part" || true  # NOCHANGE (exit 1) when there is no room
case $(findmnt -no FSTYPE /) in
  xfs) xfs_growfs / ;;
  *) resize2fs "$dev" ;;
esac
"""
GROWROOT_UNIT = """[Unit]
Description=Grow the root filesystem to the disk (Kiln)
After=local-fs.target
[Service]
Type=oneshot
ExecStart=/usr/local/sbin/kiln-growroot
StandardOutput=journal+console
[Install]
WantedBy=multi-user.target
"""
SSH_KEYS_UNIT = """[Unit]
Description=Create SSH host keys removed by sysprep (Kiln)
Before=ssh.service
ConditionPathExists=/usr/bin/ssh-keygen
[Service]
Type=oneshot
ExecStart=/usr/bin/ssh-keygen -A
[Install]
WantedBy=multi-user.target
"""
DHCP_NETWORK = """# Kiln: DHCP on every Ethernet NIC, whatever the guest names it (ens3, eth0).
[Match]
Name=en* eth*
[Network]
DHCP=yes
"""


# Caches that record build-host facts (ldconfig's holds inode numbers and ctimes)
# and are rebuilt on demand: dropped so that two builds give the same bytes.
HOST_CACHES = ("var/cache/ldconfig/aux-cache",)


def normalise_tree(tree: ImageRoot, epoch: int) -> None:
    """Drops host-specific caches and, like tar's --clamp-mtime, makes nothing
    in the image newer than the epoch, so files written at build time do not
    make two builds differ."""
    for cache in HOST_CACHES:
        tree.unlink(cache)
    for _, dirnames, filenames, dir_fd in tree.walk(topdown=False):
        for name in [*filenames, *dirnames]:
            if os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mtime > epoch:
                os.utime(name, (epoch, epoch), dir_fd=dir_fd, follow_symlinks=False)
    with tree.directory("/") as top:
        if os.fstat(top).st_mtime > epoch:
            os.utime(f"/proc/self/fd/{top}", (epoch, epoch))


def derived_uuid(seed: str, what: str) -> str:
    """Fixed UUIDs derived from the recipe, so a rebuild gives the same image."""
    return str(uuid.uuid5(KILN_NS, f"{seed}/{what}"))


@dataclass(frozen=True)
class Layout:
    partitioning: str
    root_offset: int
    root_size: int
    root_number: int
    count: int


def _kernel(tree: ImageRoot) -> str:
    """The newest kernel in /boot: a regular file (followed inside the image),
    never a name a link or anything else merely claims."""
    found = [p for p in tree.glob("/boot", "vmlinuz-*") if tree.is_file(p)]
    versions = sorted(
        (PurePosixPath(p).name.removeprefix("vmlinuz-") for p in found),
        key=lambda v: [int(x) if x.isdigit() else x for x in re.split(r"[.-]", v)],
    )
    if not versions:
        raise FailedPrecondition("the image has no kernel in /boot")
    return versions[-1]


def _enable(tree: ImageRoot, unit: str, target: str = "multi-user.target") -> None:
    tree.symlink(f"/etc/systemd/system/{target}.wants/{PurePosixPath(unit).name}", unit)


def configure_boot(
    tree: ImageRoot, *, fs_type: str, fs_uuid: str, title: str, partitioning: str
) -> str:
    """Writes fstab, grub.cfg, network and first-boot units into the root.
    Returns the kernel version booted."""
    version = _kernel(tree)
    tree.write_text("/etc/fstab", f"UUID={fs_uuid} / {fs_type} defaults 0 1\n")
    part_module = "part_gpt" if partitioning == "gpt" else "part_msdos"
    fs_module = "xfs" if fs_type == "xfs" else "ext2"
    tree.write_text(
        "/boot/grub/grub.cfg",
        "serial --unit=0 --speed=115200\n"
        "terminal_input serial console\nterminal_output serial console\n"
        "set timeout=1\n"
        f"insmod {part_module}\ninsmod {fs_module}\n"
        f"search --no-floppy --fs-uuid --set=root {fs_uuid}\n"
        f'menuentry "{title}" {{\n'
        f"  linux /boot/vmlinuz-{version} root=UUID={fs_uuid} ro"
        " console=tty0 console=ttyS0,115200n8\n"
        f"  initrd /boot/initrd.img-{version}\n}}\n",
    )
    tree.write_text("/etc/systemd/network/80-kiln-dhcp.network", DHCP_NETWORK)
    _enable(tree, "/lib/systemd/system/systemd-networkd.service")
    tree.write_text("/usr/local/sbin/kiln-growroot", GROWROOT_SH, mode=0o755)
    tree.write_text("/etc/systemd/system/kiln-growroot.service", GROWROOT_UNIT)
    tree.write_text("/etc/systemd/system/kiln-ssh-host-keys.service", SSH_KEYS_UNIT)
    _enable(tree, "/etc/systemd/system/kiln-growroot.service")
    _enable(tree, "/etc/systemd/system/kiln-ssh-host-keys.service")
    return version


async def partition(image: Path, size: int, partitioning: str, seed: str) -> Layout:
    """Creates the sparse image and its partition table (deterministic ids)."""
    image.unlink(missing_ok=True)
    image.touch()
    os.truncate(image, size)  # sparse: only what is written takes space
    if partitioning == "gpt":
        script = (
            f"label: gpt\nlabel-id: {derived_uuid(seed, 'disk')}\nunit: sectors\n"
            f"start=2048, size=2048, type={BIOS_BOOT}, uuid={derived_uuid(seed, 'bios')}\n"
            f"start=4096, type={LINUX_FS}, uuid={derived_uuid(seed, 'root')}, name=root\n"
        )
        root_number, count = 2, 2
    else:
        disk_id = derived_uuid(seed, "disk").replace("-", "")[:8]
        script = (
            f"label: dos\nlabel-id: 0x{disk_id}\nunit: sectors\nstart=2048, type=83, bootable\n"
        )
        root_number, count = 1, 1
    await run(["sh", "-c", 'printf "%s" "$1" | sfdisk --quiet "$2"', "sfdisk", script, image])
    table = json.loads((await run(["sfdisk", "--json", image])).stdout)["partitiontable"]
    root = table["partitions"][root_number - 1]
    return Layout(partitioning, root["start"] * SECTOR, root["size"] * SECTOR, root_number, count)


async def make_root_fs(
    image: Path, layout: Layout, rootdir: Path, fs_type: str, fs_uuid: str, epoch: int
) -> None:
    """ext3/ext4 are written from the directory straight into the partition's
    byte range (mkfs -d with an offset); xfs has no such option here, so it is
    made on a loop device over the range and filled through a mount."""
    env = {"E2FSPROGS_FAKE_TIME": str(epoch), "SOURCE_DATE_EPOCH": str(epoch)}
    if fs_type in ("ext4", "ext3"):
        await run(
            [
                f"mkfs.{fs_type}", "-q", "-F", "-d", rootdir, "-U", fs_uuid,
                "-E", f"offset={layout.root_offset},hash_seed={fs_uuid},root_owner=0:0",
                "-L", "root", image, f"{layout.root_size // 1024}k",
            ],
            env=env,
        )  # fmt: skip
        await _settle_inode_times(f"{image}?offset={layout.root_offset}", rootdir, epoch)
        return
    async with contextlib.AsyncExitStack() as stack:
        device = await stack.enter_async_context(loop_device(image))
        parts = await stack.enter_async_context(partition_devices(device, layout.count))
        part = parts[layout.root_number - 1]
        await run(["mkfs.xfs", "-q", "-f", "-m", f"uuid={fs_uuid}", "-L", "root", part])
        # nouuid: the UUID derives from the recipe, so another build of the same
        # recipe on this node may have an XFS with it mounted; XFS refuses that.
        fill = mounted(part, image.parent / "mnt-fill", "-o", "nouuid")
        target = await stack.enter_async_context(fill)
        await run(["cp", "-a", "--", f"{rootdir}/.", str(target)])


GRUB_DIR = Path("/usr/lib/grub/i386-pc")
# Offsets in GRUB's boot.img and diskboot.img (grub/include/grub/i386/pc/boot.h).
KERNEL_SECTOR = 0x5C  # boot.img: 8-byte LBA of core.img's first sector
DRIVE_CHECK = 0x66  # boot.img: a jump skipped for hard disks (buggy BIOS work-around)
BPB = slice(0x03, 0x5A)  # kept from the existing sector
KEEP_TAIL = 0x1B8  # disk signature and partition table kept from the existing sector
BLOCKLIST = 0x200 - 12  # diskboot.img: start (8), length (2), segment (2) of the rest
KERNEL_SEGMENT = 0x820


def stage_grub(tree: ImageRoot) -> None:
    """GRUB's modules for BIOS boot go into the image's /boot/grub from the
    build host's grub-pc-bin, before the filesystem is made."""
    if not (GRUB_DIR / "boot.img").exists():
        raise FailedPrecondition(f"{GRUB_DIR} is missing: install grub-pc-bin on the builder")
    for module in sorted(GRUB_DIR.iterdir()):
        if module.suffix in (".mod", ".lst", ".o") or module.name == "modinfo.sh":
            tree.write(f"/boot/grub/i386-pc/{module.name}", module.read_bytes())


def _inode_time_commands(tree: ImageRoot, epoch: int) -> str:
    """debugfs commands setting every inode's atime and ctime to the epoch:
    mkfs -d copies them from the build host (ctime is the time of extraction),
    and they would make every build differ."""
    lines = []
    for where, dirnames, filenames, _ in tree.walk():
        names = [str(where / n) for n in (*dirnames, *filenames)]
        for inside in ["/", *names] if where == PurePosixPath("/") else names:
            if '"' in inside or "\n" in inside:
                log.warning("cannot settle the times of %r: left as the host had them", inside)
                continue
            for field in ("ctime", "atime"):
                lines.append(f'sif "{inside}" {field} {epoch}')
    return "\n".join(lines) + "\n"


async def _settle_inode_times(device: str, rootdir: Path, epoch: int) -> None:
    commands = rootdir.parent / "debugfs-times.cmd"
    with ImageRoot(rootdir) as tree:
        commands.write_text(await asyncio.to_thread(_inode_time_commands, tree, epoch))
    try:
        # debugfs echoes each of its (tens of thousands of) commands: not logged.
        await run(
            ["debugfs", "-w", "-f", commands, device],
            env={"E2FSPROGS_FAKE_TIME": str(epoch)},
            log_output=False,
        )
    finally:
        commands.unlink(missing_ok=True)


async def install_grub(image: Path, layout: Layout, fs_type: str, fs_uuid: str, work: Path) -> None:
    """Does what grub-install's grub-bios-setup does, without asking the kernel
    which disk a partition is on (loop partitions confuse that here): build
    core.img, embed it in the BIOS boot partition (GPT) or the gap after the
    MBR, and point boot.img in sector 0 at it."""
    early = work / "grub-early.cfg"
    early.write_text(
        f"search --no-floppy --fs-uuid --set=root {fs_uuid}\nset prefix=($root)/boot/grub\n"
    )
    core_path = work / "core.img"
    part_module = "part_gpt" if layout.partitioning == "gpt" else "part_msdos"
    fs_module = "xfs" if fs_type == "xfs" else "ext2"
    await run(
        ["grub-mkimage", "-O", "i386-pc", "-d", GRUB_DIR, "-c", early, "-p", "/boot/grub",
         "-o", core_path, "biosdisk", part_module, fs_module, "search", "search_fs_uuid"]
    )  # fmt: skip
    core = bytearray(core_path.read_bytes())
    embed_lba, room = (2048, 2048) if layout.partitioning == "gpt" else (1, 2047)
    sectors = -(-len(core) // SECTOR)
    if sectors > room:
        raise FailedPrecondition(f"GRUB core image ({sectors} sectors) does not fit in {room}")
    core[BLOCKLIST : BLOCKLIST + 12] = (
        (embed_lba + 1).to_bytes(8, "little")
        + (sectors - 1).to_bytes(2, "little")
        + KERNEL_SEGMENT.to_bytes(2, "little")
    )
    await asyncio.to_thread(_embed, image, bytes(core), embed_lba)


def _embed(image: Path, core: bytes, embed_lba: int) -> None:
    with open(image, "r+b") as disk_file:
        existing = disk_file.read(SECTOR)
        boot = bytearray((GRUB_DIR / "boot.img").read_bytes())
        boot[BPB] = existing[BPB]
        boot[KERNEL_SECTOR : KERNEL_SECTOR + 8] = embed_lba.to_bytes(8, "little")
        boot[DRIVE_CHECK : DRIVE_CHECK + 2] = b"\x90\x90"
        boot[KEEP_TAIL:] = existing[KEEP_TAIL:]
        disk_file.seek(embed_lba * SECTOR)
        disk_file.write(core)
        disk_file.seek(0)
        disk_file.write(boot)
