"""The packages stage: the recipe's packages installed by apt in the sandbox
(in vm isolation, in the appliance: in_appliance)."""

from __future__ import annotations

from contextlib import AsyncExitStack
from typing import TYPE_CHECKING

from kiln_builder import customize
from kiln_builder.pkgmap import map_packages
from kiln_builder.stages.model import Stage, StepRecord

if TYPE_CHECKING:
    from kiln_builder.engine import Bake


def packages(bake: Bake) -> list[str]:
    """The distro's names for the recipe's packages (xfsprogs added for an xfs
    root made from scratch). A base image says which distro it is only once
    open, so this is called again then."""
    packages = map_packages(list(bake.recipe.packages), bake.distro)
    if bake.recipe.from_.bootstrap is not None and bake.recipe.disk.filesystem == "xfs":
        packages = sorted({*packages, "xfsprogs"})
    return packages


class Packages(Stage):
    name = "packages"
    reads = ("packages", "disk.filesystem")

    def inputs(self, bake: Bake) -> list[str]:
        return packages(bake)

    async def run(self, bake: Bake, record: StepRecord, held: AsyncExitStack) -> None:
        await customize.install_packages(
            bake.rootdir, packages(bake), bake.opts.epoch, bake.opts.sandbox
        )
