"""The packages stage: the recipe's packages installed by apt in the sandbox
(in vm isolation, in the appliance: in_appliance)."""

from __future__ import annotations

from contextlib import AsyncExitStack
from typing import TYPE_CHECKING, Any

from kiln_builder import apt_repos, customize
from kiln_builder.fingerprint import repository_sources
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
    reads = ("packages", "repositories", "disk.filesystem")

    def inputs(self, bake: Bake) -> Any:
        names = packages(bake)
        if not bake.recipe.repositories:
            return names  # the key a recipe without repositories always had
        # The repositories, their keys (in the recipe's digest) and the state of
        # each suite as the fingerprint read it: a repository that moved on
        # makes a new layer.
        parts = {source.part for source in repository_sources(bake.recipe)}
        state = [list(part) for part in bake.opts.apt_state if part[0] in parts]
        repos = apt_repos.described(bake.recipe)
        return {"packages": names, "repositories": repos, "state": state}

    async def run(self, bake: Bake, record: StepRecord, held: AsyncExitStack) -> None:
        apt_repos.configure(bake.rootdir, bake.recipe)
        await customize.install_packages(
            bake.rootdir, packages(bake), bake.opts.epoch, bake.opts.sandbox,
            repositories=bool(bake.recipe.repositories),
        )  # fmt: skip
