"""What a bake's result becomes in the build record: its base, the checks'
results, the test commands' (their output's end only), the appliance's
accelerator. Recorded whether the build then succeeded or failed."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from kiln_builder.checks import CheckReport
from kiln_builder.engine import Bake
from kiln_common.builds import (
    BaseImage,
    Build,
    BuildArtifact,
    BuildError,
    BuildState,
    CheckResult,
    TestCommandResult,
)
from kiln_common.lifecycle import Outcome

if TYPE_CHECKING:  # the vm package (libvirt) is imported only when a build boots
    from kiln_builder.vm import CommandResult


def of_attempt(
    state: BuildState, error: BuildError | None, stored: Sequence[BuildArtifact],
    log_artifact: BuildArtifact | None, accel: str, bake: Bake | None,
) -> Outcome:  # fmt: skip
    """How an attempt ended, with what its bake found, for lifecycle.finish."""
    tests = tuple(command_record(r) for r in (bake.test_commands if bake else []))
    return Outcome(
        state, error, tuple(stored), log_artifact, accel, base_record(bake), tests,
        checks_of(bake), isolation=bake.isolation if bake else "",
        appliance_accel=appliance_accel(bake),
        isolation_reason=bake.isolation_reason if bake else "",
    )  # fmt: skip


def of_cached(earlier: Build, stored: Sequence[BuildArtifact],
              log_artifact: BuildArtifact | None) -> Outcome:  # fmt: skip
    """A result-cache hit: the earlier build's artifacts and what its bake found
    (base, checks, tests, accelerators), so this record reads as that build did."""
    return Outcome(
        BuildState.SUCCEEDED, None, tuple(stored), log_artifact, earlier.accel, earlier.base,
        tuple(earlier.test_commands), tuple(earlier.checks), isolation=earlier.isolation,
        appliance_accel=earlier.appliance_accel, isolation_reason=earlier.isolation_reason,
        cached_from=earlier.id,
    )  # fmt: skip


def base_record(bake: Bake | None) -> BaseImage | None:
    """The base a customised build fetched, recorded whether it then succeeded or not."""
    base = bake.base if bake is not None else None
    if base is None:
        return None
    return BaseImage(source=base.source, sha256=base.sha256, description=base.description)


def appliance_accel(bake: Bake | None) -> str:
    accel = bake.appliance_accel if bake is not None else None
    return accel.kind if accel is not None else ""


def checks_of(bake: Bake | None) -> tuple[CheckResult, ...]:
    """The requirement checks' results, recorded whether the build then
    succeeded or failed (a failed check is the failure)."""
    report = bake.check_report if bake is not None else None
    return () if report is None else check_records(report)


def check_records(report: CheckReport) -> tuple[CheckResult, ...]:
    return tuple(
        CheckResult(
            profile=r.profile,
            rule=r.rule,
            statement=r.statement,
            passed=r.passed,
            advisory=r.advisory,
            file=r.file,
            why=r.why,
        )
        for r in report.results
    )


RECORD_OUTPUT_MAX = 4096  # bytes of a test command's output in the build record


def command_record(result: CommandResult) -> TestCommandResult:
    """A vm.CommandResult for the build record: its output's end only (the whole
    64 KiB end is in the tests artifact), so the record stays small."""
    tail = result.output.encode()[-RECORD_OUTPUT_MAX:].decode(errors="replace")
    return TestCommandResult(
        command=result.command, exit_status=result.exit_status,
        seconds=round(result.seconds, 3), output=tail, output_bytes=result.output_bytes,
        timed_out=result.timed_out, passed=result.passed,
    )  # fmt: skip
