"""The base stage of a customised build: the image fetched, inspected, copied
and grown; and what the engine reads of any tree (its distro, its kernels)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

from kiln_builder.base import fetch, formats, layout
from kiln_builder.imageroot import ImageRoot
from kiln_builder.stages.model import BaseImage
from kiln_common.errors import FailedPrecondition

if TYPE_CHECKING:
    from kiln_builder.engine import Bake

log = logging.getLogger(__name__)


async def open_base(
    bake: Bake, image: Path, stack: contextlib.AsyncExitStack
) -> tuple[layout.Layout, bool, layout.Attached | None]:
    """Fetches, inspects, copies and grows the base into image (raw); returns
    its layout, whether the disk was made bigger, and (sandbox isolation) the
    disk attached once for the whole build, held by stack."""
    ref = bake.recipe.from_.image
    assert ref is not None
    size = bake.recipe.disk_size_given()
    async with bake.step("base") as record:
        base = await fetch.fetch_base(
            ref,
            bake.opts.cache_dir,
            bake.work,
            storage=bake.opts.storage,
            publisher=bake.opts.publisher,
            route=bake.route,
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
        await layout.working_copy(inspected, image)
        # In vm mode the host mounts nothing of the base: the appliance finds
        # its root, and grows it, on the disk the host made bigger.
        held = None
        if not bake.vm_edits():
            held = await stack.enter_async_context(layout.attached(image, bare=inspected.bare))
        found = await layout.find_layout(image, inspected, probe=held is not None, held=held)
        grew = False
        if size is not None:
            grew = await layout.grow(image, found, size, resize=held is not None, held=held)
        bake.base = BaseImage(base.source, base.sha256, inspected.describe())
    return found, grew, held


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
