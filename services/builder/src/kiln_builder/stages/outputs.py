"""The outputs stage: the recipe's output files (kiln_builder.outputs) from
the disk and the tree, the SBOM, and the kernels the boot test's KVM probe
needs; a customised base's tree is read from a read-only mount."""

from __future__ import annotations

from contextlib import AsyncExitStack
from typing import TYPE_CHECKING

from kiln_builder import disk
from kiln_builder.imageroot import ImageRoot
from kiln_builder.outputs import write_outputs
from kiln_builder.sbom import package_manifest, spdx_document, write_sbom
from kiln_builder.stages.base import copy_kernels
from kiln_builder.stages.disk import prepare_tree
from kiln_builder.stages.model import BakeResult, Stage, StepRecord

if TYPE_CHECKING:
    from kiln_builder.engine import Bake


class Outputs(Stage):
    name = "outputs"
    reads = ("outputs",)

    async def run(self, bake: Bake, record: StepRecord, held: AsyncExitStack) -> None:
        if not bake.customising:
            await prepare_tree(bake)  # done already when checks or a disk came first
        if bake.opened is not None and bake.opened.disk is not None:
            await bake.opened.remount_read_only(bake, held)
        if bake.booting():
            with ImageRoot(bake.rootdir) as tree:
                copy_kernels(tree, bake.work / "kernel")
        opts, stem = bake.opts, bake.stem
        outputs = await write_outputs(
            disk=bake.image, rootfs=bake.rootdir, specs=bake.recipe.outputs,
            out_dir=opts.out_dir, stem=stem, source_date_epoch=opts.epoch,
            fs_uuid=disk.derived_uuid(bake.seed, "rootfs"),
        )  # fmt: skip
        sbom = opts.out_dir / f"{stem}.spdx.json"
        write_sbom(sbom, spdx_document(package_manifest(bake.rootdir), name=stem,
                                       namespace_seed=bake.recipe.digest(),
                                       created_epoch=opts.epoch))  # fmt: skip
        bake.result = BakeResult(
            outputs,
            sbom,
            bake.steps,
            base=bake.base,
            checks=bake.check_report,
            isolation=bake.isolation,
            appliance_accel=bake.appliance_accel,
        )
