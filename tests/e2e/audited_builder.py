"""kiln-builder under a Python audit hook that records every host path call the
builder makes under an image tree: `open`, listing, creating, removing,
renaming, linking, chmod/chown/utime, xattrs, shutil's copies.

    python audited_builder.py REPORT WORK_ROOT -- bake RECIPE --out ...

An image tree is a build's `WORK_ROOT/<build>/root` (from scratch) or
`WORK_ROOT/<build>/mnt` (a customised base, mounted), or the boot test's
`<tmp>/kiln-vm-*/root`. The builder may name a tree root itself (to open it, or
to hand it to tar or mkfs); anything below it must be reached through
kiln_builder.imageroot, whose calls are relative to directory descriptors.
Each offending call is written to REPORT as a JSON line with its stack, so a
new build step that bypasses the API makes tests/e2e/test_planted_links.py fail.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import traceback
from pathlib import Path

# Events whose arguments name paths; subprocess and exec events are left out:
# the tools Kiln runs (tar, mkfs, cp) take a tree root by design.
WATCHED = {
    "open", "os.chdir", "os.chflags", "os.chmod", "os.chown", "os.getxattr", "os.link",
    "os.listdir", "os.listxattr", "os.mkdir", "os.mkfifo", "os.mknod", "os.remove",
    "os.removexattr", "os.rename", "os.rmdir", "os.scandir", "os.setxattr", "os.symlink",
    "os.truncate", "os.utime", "shutil.copyfile", "shutil.copymode", "shutil.copystat",
    "shutil.copytree", "shutil.move", "shutil.rmtree", "glob.glob",
}  # fmt: skip
TREE_NAMES = ("root", "mnt")


def tree_of(path: str, work_root: str, tmp: str) -> str | None:
    """The tree root path lies in, if any."""
    for base, depth in ((work_root, 1), (tmp, 1)):
        if not path.startswith(base + "/"):
            continue
        parts = path[len(base) + 1 :].split("/")
        if len(parts) <= depth or parts[depth] not in TREE_NAMES:
            continue
        if base == tmp and not parts[0].startswith("kiln-vm-"):
            continue
        return "/".join([base, *parts[: depth + 1]])
    return None


def install(report: Path, work_root: Path) -> None:
    root = os.path.realpath(work_root)
    tmp = os.path.realpath(tempfile.gettempdir())
    out = open(report, "a", buffering=1)  # noqa: SIM115 - open for the process's life
    busy = False

    def hook(event: str, args: tuple[object, ...]) -> None:
        nonlocal busy
        if busy or event not in WATCHED:
            return
        busy = True
        try:
            for arg in args:
                if isinstance(arg, (str, bytes, os.PathLike)):
                    path = os.fsdecode(os.fspath(arg))
                    if not path.startswith("/"):
                        continue  # relative to a directory descriptor (imageroot), or cwd
                    absolute = os.path.normpath(path)
                    tree = tree_of(absolute, root, tmp)
                    if tree is not None and absolute != tree:
                        stack = "".join(traceback.format_stack(limit=12)[:-1])
                        out.write(json.dumps({"event": event, "path": absolute, "stack": stack}))
                        out.write("\n")
        finally:
            busy = False

    sys.addaudithook(hook)


if __name__ == "__main__":
    report, work = Path(sys.argv[1]), Path(sys.argv[2])
    assert sys.argv[3] == "--", sys.argv
    install(report, work)
    from kiln_builder.__main__ import main

    sys.exit(main(sys.argv[4:]))
