"""The checks stage: the recipe's requirement profiles (kiln_builder.checks)
on the finished tree, before any disk or output is made of it; a from-scratch
tree gets its boot configuration first, so it is checked as the disk holds it."""

from __future__ import annotations

from contextlib import AsyncExitStack
from typing import TYPE_CHECKING

from kiln_builder import checks
from kiln_builder.stages.disk import prepare_tree
from kiln_builder.stages.model import Stage, StepRecord

if TYPE_CHECKING:
    from kiln_builder.engine import Bake


class Checks(Stage):
    name = "checks"
    reads = ("checks",)

    async def run(self, bake: Bake, record: StepRecord, held: AsyncExitStack) -> None:
        if not bake.customising:
            await prepare_tree(bake)
        report_file = bake.opts.out_dir / f"{bake.stem}.checks.json"
        facts = checks.facts_for(bake.recipe, bake.partitioned)
        try:
            bake.check_report = await checks.check_tree(
                bake.rootdir, bake.recipe, report_file, facts
            )
        except checks.ChecksFailed as exc:
            bake.check_report = exc.report  # the build record keeps every result
            raise
