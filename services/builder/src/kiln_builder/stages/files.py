"""The files stage: the recipe's files written into the tree through imageroot
(in vm isolation, in the appliance)."""

from __future__ import annotations

from contextlib import AsyncExitStack
from typing import TYPE_CHECKING, Any

from kiln_builder import customize
from kiln_builder.stages.model import Stage, StepRecord
from kiln_common.digests import file_sha256
from kiln_recipe.schema import Recipe

if TYPE_CHECKING:
    from kiln_builder.engine import Bake


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


class Files(Stage):
    name = "files"
    reads = ("files",)

    def inputs(self, bake: Bake) -> list[dict[str, Any]]:
        return file_inputs(bake.recipe)

    async def run(self, bake: Bake, record: StepRecord, held: AsyncExitStack) -> None:
        for spec in bake.recipe.files:
            data = (
                spec.content.encode()
                if spec.content is not None
                else (bake.recipe.base_dir / str(spec.source)).read_bytes()
            )
            customize.write_file(bake.rootdir, spec.path, data, int(spec.mode, 8),
                                 spec.owner, spec.group)  # fmt: skip
