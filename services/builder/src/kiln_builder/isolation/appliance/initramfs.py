"""The appliance's own initramfs: a busybox, the handful of modules that reach
a virtio disk with ext4 on it, and an /init that mounts the appliance's root
read-only and hands over to init.sh. Debian's initramfs (udev probing every
device, a 30 MB image to unpack) took 25 s of a 45 s boot under TCG; this one
is a few MB, uncompressed, and loads only what it needs."""

from __future__ import annotations

import stat
from collections.abc import Iterable
from pathlib import Path

from kiln_common.errors import FailedPrecondition

# Reaches /dev/vda (virtio-blk over PCI) and mounts ext4 (whose checksums need
# crc32c: the crypto API cannot modprobe it from here, so it is loaded first).
MODULES = ("crc32c_generic", "virtio_pci", "virtio_blk", "ext4")

INIT = """#!/bin/busybox sh
# Kiln appliance initramfs: load the modules, mount the root read-only, go.
/bin/busybox mount -t devtmpfs dev /dev
for m in $(/bin/busybox cat /modules); do /bin/busybox insmod "/lib/modules/$m"; done
i=0
while [ ! -b /dev/vda ] && [ $i -lt 200 ]; do /bin/busybox sleep 0.05; i=$((i + 1)); done
/bin/busybox mount -o ro -t ext4 /dev/vda /root || exec /bin/busybox sh
/bin/busybox mount --move /dev /root/dev
exec /bin/busybox switch_root /root "$KILN_INIT"
"""


def load_order(modules_dep: str, wanted: Iterable[str]) -> list[str]:
    """Paths (relative to the kernel's module directory) of wanted and their
    dependencies, each after everything it depends on."""
    deps: dict[str, list[str]] = {}
    by_name: dict[str, str] = {}
    for line in modules_dep.splitlines():
        if ":" not in line:
            continue
        path, _, rest = line.partition(":")
        deps[path] = rest.split()
        by_name[Path(path).name.split(".ko")[0].replace("-", "_")] = path
    order: list[str] = []

    def visit(path: str) -> None:
        if path in order:
            return
        for dep in reversed(deps.get(path, [])):  # modules.dep lists the deepest last
            visit(dep)
        order.append(path)

    for name in wanted:
        if name not in by_name:
            raise FailedPrecondition(f"the appliance kernel has no module {name} (built in?)")
        visit(by_name[name])
    return order


def _entry(
    name: str, mode: int, data: bytes = b"", ino: int = 0, rdev: tuple[int, int] = (0, 0)
) -> bytes:
    fields = [ino, mode, 0, 0, 1, 0, len(data), 0, 0, rdev[0], rdev[1], len(name) + 1, 0]
    head = b"070701" + b"".join(f"{v:08x}".encode() for v in fields) + name.encode() + b"\0"
    head += b"\0" * (-len(head) % 4)
    return head + data + b"\0" * (-len(data) % 4)


def cpio(
    entries: list[tuple[str, int, bytes]], devices: Iterable[tuple[str, int, int]] = ()
) -> bytes:
    """A newc cpio archive (what the kernel unpacks as an initramfs)."""
    out = []
    ino = 1
    for name, mode, data in entries:
        out.append(_entry(name, mode, data, ino))
        ino += 1
    for name, major, minor in devices:
        out.append(_entry(name, stat.S_IFCHR | 0o600, ino=ino, rdev=(major, minor)))
        ino += 1
    out.append(_entry("TRAILER!!!", 0))
    archive = b"".join(out)
    return archive + b"\0" * (-len(archive) % 512)


def build(tree: Path, kernel_release: str, init_path: str) -> bytes:
    moddir = tree / "usr/lib/modules" / kernel_release
    order = load_order((moddir / "modules.dep").read_text(), MODULES)
    directory = stat.S_IFDIR | 0o755
    entries: list[tuple[str, int, bytes]] = [
        (d, directory, b"") for d in ("bin", "dev", "lib", "lib/modules", "proc", "root")
    ]
    busybox = (tree / "bin/busybox").read_bytes()
    entries.append(("bin/busybox", stat.S_IFREG | 0o755, busybox))
    for path in order:
        entries.append((f"lib/modules/{Path(path).name}", stat.S_IFREG | 0o644,
                        (moddir / path).read_bytes()))  # fmt: skip
    listing = "".join(f"{Path(p).name}\n" for p in order).encode()
    entries.append(("modules", stat.S_IFREG | 0o644, listing))
    init = INIT.replace('"$KILN_INIT"', f"/{init_path}").encode()
    entries.append(("init", stat.S_IFREG | 0o755, init))
    return cpio(entries, devices=[("dev/console", 5, 1)])
