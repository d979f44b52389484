"""The disk stage of a from-scratch build: the tree's boot configuration, then
a partitioned raw disk, its root filesystem made from the tree, and GRUB
(kiln_builder.disk). Disk and filesystem UUIDs derive from the recipe's name
and version, so the same image gets the same ids."""

from __future__ import annotations

import asyncio
from contextlib import AsyncExitStack
from typing import TYPE_CHECKING

from kiln_builder import disk
from kiln_builder.imageroot import ImageRoot
from kiln_builder.stages.model import Stage, StepRecord

if TYPE_CHECKING:
    from kiln_builder.engine import Bake


async def prepare_tree(bake: Bake) -> None:
    """fstab, kernel command line and GRUB configuration, and normalised
    timestamps: the same tree whether a disk is made of it or not. Once per
    build, by whichever of checks, disk and outputs comes first."""
    if bake.prepared:
        return
    bake.prepared = True
    recipe = bake.recipe
    with ImageRoot(bake.rootdir) as tree:
        disk.configure_boot(
            tree,
            fs_type=recipe.disk.filesystem,
            fs_uuid=disk.derived_uuid(bake.seed, "rootfs"),
            title=f"{recipe.name} {recipe.version}",
            partitioning=recipe.disk.partitioning,
        )
        if bake.needs_disk():
            disk.stage_grub(tree)
        await asyncio.to_thread(disk.normalise_tree, tree, bake.opts.epoch)


class Disk(Stage):
    name = "disk"
    reads = ("disk",)

    async def run(self, bake: Bake, record: StepRecord, held: AsyncExitStack) -> None:
        recipe, image = bake.recipe, bake.image
        fs_uuid = disk.derived_uuid(bake.seed, "rootfs")
        await prepare_tree(bake)
        layout = await disk.partition(image, recipe.disk.size, recipe.disk.partitioning, bake.seed)
        await disk.make_root_fs(image, layout, bake.rootdir, recipe.disk.filesystem,
                                fs_uuid, bake.opts.epoch)  # fmt: skip
        await disk.install_grub(image, layout, recipe.disk.filesystem, fs_uuid, bake.work)
