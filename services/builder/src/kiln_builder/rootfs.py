"""Which filesystem of an image is its root, by one rule wherever Kiln looks:
the base's layout (base.layout), the boot test's throwaway copy (vm.commands)
and the appliance (appliance/findroot.sh, which states the same rule in shell;
tests/integration/test_root_discovery.py checks the two agree).

The rule: the partitions in number order, then the whole disk; the first whose
filesystem is one of ROOT_TYPES and that holds one of ROOT_MARKS as a regular
file, reached through directories, no link on the way. A link does not count:
where it leads depends on who follows it (the host, the appliance), and
usr/lib/os-release, the file etc/os-release links to on every current Debian
and Ubuntu, is itself a mark."""

from __future__ import annotations

import stat
from pathlib import Path

from kiln_builder.imageroot import ImageRoot

ROOT_TYPES = ("ext4", "ext3", "ext2", "xfs")
ROOT_MARKS = ("etc/os-release", "usr/lib/os-release", "etc/fstab")
SHELL = Path(__file__).with_name("appliance") / "findroot.sh"


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
