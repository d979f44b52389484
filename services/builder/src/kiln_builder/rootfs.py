"""Which filesystem of an image is its root, by one rule wherever Kiln looks:
the base's layout (base.layout), the boot test's throwaway copy (mounted_root,
here) and the appliance (appliance/findroot.sh, which states the same rule in shell;
tests/integration/test_root_discovery.py checks the two agree).

The rule: the partitions in number order, then the whole disk; the first whose
filesystem is one of ROOT_TYPES and that holds one of ROOT_MARKS as a regular
file, reached through directories, no link on the way. A link does not count:
where it leads depends on who follows it (the host, the appliance), and
usr/lib/os-release, the file etc/os-release links to on every current Debian
and Ubuntu, is itself a mark."""

from __future__ import annotations

import contextlib
import json
import stat
from collections.abc import AsyncIterator
from pathlib import Path

from kiln_builder.imageroot import ImageRoot
from kiln_builder.resources import loop_device, mounted
from kiln_common.errors import FailedPrecondition
from kiln_common.proc import ProcessError, run

ROOT_TYPES = ("ext4", "ext3", "ext2", "xfs")
ROOT_MARKS = ("etc/os-release", "usr/lib/os-release", "etc/fstab")
SHELL = Path(__file__).with_name("isolation") / "appliance" / "findroot.sh"
SECTOR = 512


def holds_root(mounted: Path) -> bool:
    """Whether the filesystem mounted there is a root: one of the marks is a
    plain file (read inside the image: no link can point the question at the
    host)."""
    with ImageRoot(mounted) as tree:
        return any(_plain_file(tree, name) for name in ROOT_MARKS)


def _plain_file(tree: ImageRoot, name: str) -> bool:
    """name is a regular file and each directory on its way a directory, no
    link among them (each checked before the next is looked up)."""
    parts = name.split("/")
    for depth in range(1, len(parts)):
        found = tree.lstat("/".join(parts[:depth]))
        if found is None or not stat.S_ISDIR(found.st_mode):
            return False
    found = tree.lstat(name)
    return found is not None and stat.S_ISREG(found.st_mode)


async def _candidates(disk: Path) -> list[tuple[int, int]]:
    """(offset, size) of the partitions in number order, then the whole disk."""
    listed = await run(["sfdisk", "--json", disk], check=False, log_output=False)
    whole = (0, disk.stat().st_size)
    if listed.returncode != 0:
        return [whole]
    parts = json.loads(listed.stdout)["partitiontable"].get("partitions", [])
    # sfdisk lists them in the table's order, which is their numbers'.
    return [(p["start"] * SECTOR, p["size"] * SECTOR) for p in parts] + [whole]


async def _fs_type(device: str) -> str:
    found = await run(["blkid", "-p", "-o", "value", "-s", "TYPE", device], check=False)
    return found.stdout.strip()


@contextlib.asynccontextmanager
async def mounted_root(disk: Path, where: Path) -> AsyncIterator[Path]:
    """The disk's root filesystem mounted at where, found by kiln_builder.rootfs's
    rule (the appliance's too)."""
    tried = []
    for offset, size in await _candidates(disk):
        async with contextlib.AsyncExitStack() as stack:
            device = await stack.enter_async_context(loop_device(disk, offset=offset, size=size))
            kind = await _fs_type(device)
            if kind not in ROOT_TYPES:
                tried.append(f"offset {offset}: {kind or 'no filesystem'}")
                continue
            # The image's device nodes and setuid bits mean nothing here; nouuid:
            # another build on this node may have the same XFS mounted.
            options = "nodev,nosuid,nouuid" if kind == "xfs" else "nodev,nosuid"
            try:
                root = await stack.enter_async_context(mounted(device, where, "-o", options))
            except ProcessError as exc:  # not mountable here: the rule's next candidate
                said = (exc.output.strip().splitlines() or [f"exit {exc.returncode}"])[-1]
                tried.append(f"offset {offset}: {kind} not mountable ({said})")
                continue
            if holds_root(root):
                yield root
                return
            tried.append(f"offset {offset}: {kind} without {' or '.join(ROOT_MARKS)}")
    raise FailedPrecondition(
        f"no root filesystem found in {disk.name} to add the test commands to ({'; '.join(tried)})"
    )
