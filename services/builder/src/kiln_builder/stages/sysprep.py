"""The sysprep stage: what makes an image generic (machine-id, SSH host keys,
logs...) removed from the tree through imageroot."""

from __future__ import annotations

from contextlib import AsyncExitStack
from typing import TYPE_CHECKING

from kiln_builder import customize
from kiln_builder.stages.model import Stage, StepRecord

if TYPE_CHECKING:
    from kiln_builder.engine import Bake


class Sysprep(Stage):
    name = "sysprep"
    reads = ("sysprep",)

    def inputs(self, bake: Bake) -> list[str]:
        return list(bake.recipe.sysprep_operations())

    async def run(self, bake: Bake, record: StepRecord, held: AsyncExitStack) -> None:
        customize.sysprep(bake.rootdir, bake.recipe.sysprep_operations())
