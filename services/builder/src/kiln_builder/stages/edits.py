"""The stages that change the image's tree (packages, files, run, sysprep) as
the host runs them: in the sandbox, or through imageroot; and the inputs each
puts into its layer's key."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from kiln_builder import customize
from kiln_builder.pkgmap import map_packages
from kiln_common.digests import file_sha256
from kiln_recipe.schema import Recipe

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


async def install_packages(bake: Bake) -> None:
    await customize.install_packages(
        bake.rootdir, packages(bake), bake.opts.epoch, bake.opts.sandbox
    )


async def write_files(bake: Bake) -> None:
    for spec in bake.recipe.files:
        data = (
            spec.content.encode()
            if spec.content is not None
            else (bake.recipe.base_dir / str(spec.source)).read_bytes()
        )
        customize.write_file(bake.rootdir, spec.path, data, int(spec.mode, 8),
                             spec.owner, spec.group)  # fmt: skip


async def run_scripts(bake: Bake) -> None:
    for step in bake.recipe.run:
        script = bake.recipe.base_dir / step.script if step.script else None
        await customize.run_script(
            bake.rootdir, script, step.inline, bake.work, bake.opts.epoch, bake.opts.sandbox
        )


async def sysprep(bake: Bake) -> None:
    customize.sysprep(bake.rootdir, bake.recipe.sysprep_operations())


def file_inputs(recipe: Recipe) -> list[dict[str, Any]]:
    out = []
    for spec in recipe.files:
        data = spec.content if spec.content is not None else read_source(recipe, spec.source)
        out.append({"path": spec.path, "data": data, "mode": spec.mode,
                    "owner": spec.owner, "group": spec.group})  # fmt: skip
    return out


def read_source(recipe: Recipe, source: str | None) -> str:
    assert source is not None
    return "sha256:" + file_sha256(recipe.base_dir / source)  # the key needs its digest only


def run_inputs(recipe: Recipe) -> list[str]:
    return [
        (recipe.base_dir / step.script).read_text() if step.script else (step.inline or "")
        for step in recipe.run
    ]
