"""The run stage: the recipe's scripts run in the sandbox (in vm isolation, in
the appliance)."""

from __future__ import annotations

from contextlib import AsyncExitStack
from typing import TYPE_CHECKING

from kiln_builder import customize
from kiln_builder.stages.model import Stage, StepRecord

if TYPE_CHECKING:
    from kiln_builder.engine import Bake


class Run(Stage):
    name = "run"
    reads = ("run",)

    def inputs(self, bake: Bake) -> list[str]:
        return [
            (bake.recipe.base_dir / step.script).read_text() if step.script else (step.inline or "")
            for step in bake.recipe.run
        ]

    async def run(self, bake: Bake, record: StepRecord, held: AsyncExitStack) -> None:
        for step in bake.recipe.run:
            script = bake.recipe.base_dir / step.script if step.script else None
            await customize.run_script(
                bake.rootdir, script, step.inline, bake.work, bake.opts.epoch, bake.opts.sandbox
            )
