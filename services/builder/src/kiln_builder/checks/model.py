"""Requirement checks: rules, the facts they may use besides the tree, and
their results (a report kept as JSON beside the image and in the build record)."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from kiln_builder.checks.tree import Tree
from kiln_common.errors import FailedPrecondition

REPORT_VERSION = 1


@dataclass(frozen=True)
class Facts:
    """What the build will make of the tree, which the tree cannot tell."""

    outputs: tuple[str, ...] = ()  # as the recipe names them: qcow2, ext3.bz2
    root_fs: str = "ext4"  # the filesystem of a partitioned disk's root
    partitioned: bool = True  # a partitioned, bootable disk is among the outputs
    bare: bool = False  # a bare filesystem image (no partition table) is among them


class Verdict(NamedTuple):
    passed: bool
    file: str  # the file (or recipe field) the rule looked at last
    why: str


Check = Callable[[Tree, Facts], Verdict]


@dataclass(frozen=True)
class Rule:
    id: str  # profile.name: tycoon.ssh-enabled
    statement: str  # one line a user reads: what the image must have
    check: Check


@dataclass(frozen=True)
class CheckResult:
    profile: str
    rule: str
    statement: str
    passed: bool
    advisory: bool
    file: str
    why: str

    @property
    def blocking(self) -> bool:
        """A failed rule of a profile that is not advisory fails the build."""
        return not self.passed and not self.advisory

    def line(self) -> str:
        """One readable line: PASS/FAIL/WARN, the rule, the file and why."""
        word = "PASS" if self.passed else ("WARN" if self.advisory else "FAIL")
        where = f"{self.file}: " if self.file else ""
        return f"{word} {self.rule}: {where}{self.why}"


@dataclass(frozen=True)
class CheckReport:
    profiles: tuple[tuple[str, bool], ...]  # (profile, advisory) as checked
    results: tuple[CheckResult, ...]
    path: Path | None = field(default=None, compare=False)  # the JSON file, once written

    @property
    def failures(self) -> tuple[CheckResult, ...]:
        return tuple(r for r in self.results if r.blocking)

    @property
    def passed(self) -> bool:
        return not self.failures

    def to_dict(self) -> dict[str, Any]:
        return {
            "kiln-checks": REPORT_VERSION,
            "passed": self.passed,
            "profiles": [{"profile": p, "advisory": a} for p, a in self.profiles],
            "results": [asdict(r) for r in self.results],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CheckReport:
        return cls(
            tuple((p["profile"], bool(p["advisory"])) for p in data["profiles"]),
            tuple(CheckResult(**r) for r in data["results"]),
        )

    def write(self, path: Path) -> None:
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        tmp.replace(path)


class ChecksFailed(FailedPrecondition):
    """A rule of a profile the recipe does not mark advisory failed. Not worth
    a retry: the same recipe makes the same tree. `report` holds every result."""

    def __init__(self, message: str, report: CheckReport | None = None) -> None:
        super().__init__(message)
        self.report = report

    @classmethod
    def of(cls, report: CheckReport) -> ChecksFailed:
        failed = "; ".join(f"{r.rule} ({r.file or 'image'}: {r.why})" for r in report.failures)
        count = len(report.failures)
        return cls(f"{count} requirement check{'s' * (count != 1)} failed: {failed}", report)
