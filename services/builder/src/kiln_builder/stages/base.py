"""The base stage of a customised build: the image fetched, inspected, copied
and grown, and (sandbox isolation) attached once and mounted for the edits;
and what the engine reads of any tree (its distro, its kernels)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

from kiln_builder.base import fetch, formats, layout
from kiln_builder.imageroot import ImageRoot
from kiln_builder.stages.model import BaseImage, Stage, StepRecord
from kiln_common.errors import FailedPrecondition

if TYPE_CHECKING:
    from kiln_builder.engine import Bake

log = logging.getLogger(__name__)


@dataclass
class OpenedBase:
    """The base's disk as the build holds it: its layout, whether it was
    grown, and in sandbox isolation the disk attached once for the whole build
    and the tree mounted read-write for the edits (in vm isolation the host
    opens neither: the appliance does)."""

    found: layout.Layout
    grew: bool
    disk: layout.Attached | None = None
    mnt: Path = Path()
    mounted: contextlib.AsyncExitStack = field(default_factory=contextlib.AsyncExitStack)

    async def remount_read_only(self, bake: Bake, held: contextlib.AsyncExitStack) -> None:
        """Unmounted cleanly (journal closed) before the disk's bytes are
        converted; mounted again read-only for the tree outputs and the SBOM."""
        assert self.disk is not None
        await self.mounted.aclose()
        opened = layout.opened(self.disk, self.found, self.mnt, read_only=True)
        bake.rootdir = await held.enter_async_context(opened)


class Base(Stage):
    """The base fetched, inspected, copied into the build's disk.raw and grown."""

    name = "base"
    reads = ("from.image", "disk.size")

    async def run(self, bake: Bake, record: StepRecord, held: contextlib.AsyncExitStack) -> None:
        ref = bake.recipe.from_.image
        assert ref is not None
        size = bake.recipe.disk_size_given()
        base = await fetch.fetch_base(
            ref,
            bake.opts.cache_dir,
            bake.work,
            storage=bake.opts.storage,
            publisher=bake.opts.publisher,
            route=bake.route,
            followed=bake.opts.base_digest,
        )
        record.cached = base.downloaded == 0
        inspected = await asyncio.to_thread(
            formats.prepare, base.path, bake.work, size or formats.MAX_VIRTUAL
        )
        log.info("base image %s: %s (sha256 %s)", base.source, inspected.describe(), base.sha256)
        if inspected.bare and bake.booting():
            raise FailedPrecondition(
                f"the base is a {inspected.describe()}: it has no kernel or bootloader"
                " to boot, so set test: {boot: false}"
            )
        await layout.working_copy(inspected, bake.image)
        # In vm mode the host mounts nothing of the base: the appliance finds
        # its root, and grows it, on the disk the host made bigger.
        disk = None
        if not bake.vm_edits():
            attached = layout.attached(bake.image, bare=inspected.bare)
            disk = await held.enter_async_context(attached)
        found = await layout.find_layout(bake.image, inspected, probe=disk is not None, held=disk)
        grew = False
        if size is not None:
            grew = await layout.grow(bake.image, found, size, resize=disk is not None, held=disk)
        bake.base = BaseImage(base.source, base.sha256, inspected.describe())
        bake.partitioned = not found.bare
        bake.opened = OpenedBase(found, grew, disk, bake.work / "mnt")
        if disk is not None:  # sandbox isolation: the edits change the mounted tree
            await held.enter_async_context(bake.opened.mounted)
            opened = layout.opened(disk, found, bake.opened.mnt)
            bake.rootdir = await bake.opened.mounted.enter_async_context(opened)
            with ImageRoot(bake.rootdir) as tree:
                bake.distro = distro_of(tree)


def distro_of(tree: ImageRoot) -> str:
    """debian or ubuntu, from the image's os-release (ID, then ID_LIKE)."""
    for name in ("/etc/os-release", "/usr/lib/os-release"):
        text = tree.read_text(name)
        if text is None:
            continue
        fields = dict(line.split("=", 1) for line in text.splitlines() if "=" in line)
        ids = [fields.get("ID", ""), *fields.get("ID_LIKE", "").split()]
        for distro in ("ubuntu", "debian"):
            if distro in (i.strip('"') for i in ids):
                return distro
    log.warning("the base image does not say it is Debian or Ubuntu: package names are Debian's")
    return "debian"


def copy_kernels(tree: ImageRoot, dest: Path) -> None:
    """The image's kernels and initrds, copied out of its /boot for the boot
    test's KVM probe (regular files only, read inside the image)."""
    dest.mkdir(parents=True, exist_ok=True)
    for path in tree.glob("/boot", "vmlinuz-*") + tree.glob("/boot", "initrd.img-*"):
        tree.copy_out(path, dest / PurePosixPath(path).name)
