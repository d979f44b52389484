"""Requirement checks (`checks:` in a recipe): the `tycoon`, `stratuslab` and
`cloud` profiles as rules over a finished image tree. Each rule has an id, a
statement a user can read, and a check that says pass or fail, the file it
looked at, and why. Nothing in the tree is executed, and every path is
resolved inside the tree (see checks.tree).

    report = checks.run(root, [("tycoon", False)], Facts(outputs=("ext3.bz2",)))
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

from kiln_builder.checks import cloud, stratuslab, tycoon
from kiln_builder.checks.model import (
    CheckReport,
    CheckResult,
    ChecksFailed,
    Facts,
    Rule,
    Verdict,
)
from kiln_builder.checks.tree import Tree
from kiln_builder.outputs import TREE_FORMATS

__all__ = [
    "PROFILES",
    "CheckReport",
    "CheckResult",
    "ChecksFailed",
    "Facts",
    "Rule",
    "Tree",
    "Verdict",
    "check_tree",
    "facts_for",
    "run",
]

log = logging.getLogger(__name__)

PROFILES: dict[str, tuple[Rule, ...]] = {
    "tycoon": tycoon.RULES,
    "stratuslab": stratuslab.RULES,
    "cloud": cloud.RULES,
}


def _evaluate(rule: Rule, tree: Tree, facts: Facts) -> Verdict:
    try:
        return rule.check(tree, facts)
    except OSError as exc:  # an unreadable file in the image: a failed rule, not a crash
        return Verdict(False, exc.filename or "", f"could not be read: {exc.strerror or exc}")


def run(root: Path, profiles: Sequence[tuple[str, bool]], facts: Facts) -> CheckReport:
    """Every rule of each (profile, advisory) over the tree at root."""
    with Tree(root) as tree:
        results = _results(tree, profiles, facts)
    return CheckReport(tuple((str(p), bool(a)) for p, a in profiles), tuple(results))


def _results(tree: Tree, profiles: Sequence[tuple[str, bool]], facts: Facts) -> list[CheckResult]:
    results = []
    for profile, advisory in profiles:
        if profile not in PROFILES:
            raise ValueError(f"unknown requirement profile {profile!r}")
        for rule in PROFILES[profile]:
            verdict = _evaluate(rule, tree, facts)
            results.append(
                CheckResult(
                    profile,
                    rule.id,
                    rule.statement,
                    verdict.passed,
                    advisory,
                    verdict.file,
                    verdict.why,
                )
            )
    return results


class _Output(Protocol):
    @property
    def format(self) -> str: ...

    @property
    def name(self) -> str: ...


class _Disk(Protocol):
    @property
    def filesystem(self) -> str: ...


class RecipeLike(Protocol):
    """What the checks need of a recipe (kiln_recipe.Recipe)."""

    @property
    def outputs(self) -> Sequence[_Output]: ...

    @property
    def disk(self) -> _Disk: ...

    def check_profiles(self) -> Sequence[tuple[str, bool]]: ...


def facts_for(recipe: RecipeLike, partitioned: bool | None = None) -> Facts:
    """What the recipe's outputs will be. partitioned: whether the disk has a
    partition table (a customised base decides; from scratch, Kiln makes one)."""
    formats = [o.format for o in recipe.outputs]
    disk_out = any(f not in TREE_FORMATS for f in formats)
    return Facts(
        outputs=tuple(o.name for o in recipe.outputs),
        root_fs=recipe.disk.filesystem,
        partitioned=disk_out and (partitioned is None or partitioned),
        bare=any(f in ("ext3", "ext4") for f in formats),
    )


async def check_tree(
    root: Path, recipe: RecipeLike, report_file: Path, facts: Facts | None = None
) -> CheckReport:
    """The engine's `checks` step: runs the recipe's profiles over the finished
    tree, logs each result, writes the report to report_file, and raises
    ChecksFailed (carrying the report) if a rule of a non-advisory profile failed."""
    facts = facts if facts is not None else facts_for(recipe)
    report = await asyncio.to_thread(run, root, recipe.check_profiles(), facts)
    for result in report.results:
        log.log(logging.INFO if result.passed else logging.WARNING, "check %s", result.line())
    report_file.parent.mkdir(parents=True, exist_ok=True)
    report = dataclasses.replace(report, path=report_file)
    report.write(report_file)
    if not report.passed:
        raise ChecksFailed.of(report)
    return report
