"""The build lifecycle, in one place: the names of build states, step states
and build events (one table, shared by the builder, its events and the CLI),
and the pure transitions of a build record.

A transition changes a record in place and says whether it changed it. The
builder stores a record only when it changed, and sends the transition's
event only when its own write made the change: however many pods try to end
one build, exactly one ends it, and exactly one terminal event is sent."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from kiln_common.builds import (
    BaseImage,
    Build,
    BuildArtifact,
    BuildError,
    BuildState,
    CheckResult,
    Fingerprint,
    StepState,
    TestCommandResult,
)
from kiln_common.errors import FailedPrecondition

State = BuildState


@dataclass(frozen=True)
class StateInfo:
    word: str  # as the CLI shows it and filters take it
    event: str  # the event sent when a build enters the state
    terminal: bool
    exit_code: int  # `kiln build --follow` exits with this once the build is here


STATES: dict[State, StateInfo] = {
    BuildState.QUEUED: StateInfo("queued", "build.queued", False, 1),
    BuildState.RUNNING: StateInfo("running", "build.started", False, 1),
    BuildState.SUCCEEDED: StateInfo("succeeded", "build.succeeded", True, 0),
    BuildState.FAILED: StateInfo("failed", "build.failed", True, 1),
    BuildState.CANCELLED: StateInfo("cancelled", "build.cancelled", True, 3),
}
STEP_WORDS: dict[StepState, str] = {
    StepState.PENDING: "pending",
    StepState.RUNNING: "running",
    StepState.DONE: "done",
    StepState.FAILED: "failed",
    StepState.CANCELLED: "cancelled",
}
STEP_EVENT = "build.step"
TERMINAL = frozenset(s for s, info in STATES.items() if info.terminal)
WORDS = tuple(info.word for info in STATES.values())


def word(state: State) -> str:
    info = STATES.get(state)
    return info.word if info else "unspecified"


def state_of(text: str) -> State:
    """The state a word names ("" is unspecified: any state)."""
    for state, info in STATES.items():
        if info.word == text:
            return state
    if text:
        raise ValueError(f"unknown build state {text!r} (one of {', '.join(WORDS)})")
    return BuildState.UNSPECIFIED


def step_word(state: StepState) -> str:
    return STEP_WORDS.get(state, "unspecified")


def now() -> datetime:
    return datetime.now(UTC)


# ---- transitions: each changes the record in place and says whether it did ----------------


def start(build: Build, worker: str, attempt: int) -> bool:
    """A worker takes the build (a queued one, or a running one whose worker
    was presumed dead). An ended or cancelled build is not taken."""
    if build.state in TERMINAL or build.cancel_requested:
        return False
    build.state = BuildState.RUNNING
    build.worker = worker
    build.attempt = attempt
    if build.started is None:
        build.started = now()
    build.steps.clear()
    build.checks.clear()
    build.error = None
    return True


def held_by(build: Build, worker: str, attempt: int) -> bool:
    """Whether this worker's attempt still owns the running build."""
    return build.state == BuildState.RUNNING and build.worker == worker and build.attempt == attempt


def fingerprinted(build: Build, worker: str, attempt: int, fingerprint: Fingerprint) -> bool:
    """The attempt that holds the build records the inputs it read."""
    if not held_by(build, worker, attempt):
        return False
    build.fingerprint = fingerprint
    return True


def requeue(build: Build, worker: str, attempt: int, error: BuildError | None = None) -> bool:
    """The worker's attempt hands the build back to the queue (shutting down,
    or a failure worth another try). Only the attempt that holds it can."""
    if not held_by(build, worker, attempt):
        return False
    build.state = BuildState.QUEUED
    build.worker = ""
    if error is not None:
        build.error = error
    return True


@dataclass(frozen=True)
class Outcome:
    state: State
    error: BuildError | None = None
    artifacts: tuple[BuildArtifact, ...] = ()
    log_artifact: BuildArtifact | None = None
    accel: str = ""
    base: BaseImage | None = None  # a customised build's base, once fetched
    test_commands: tuple[TestCommandResult, ...] = ()
    checks: tuple[CheckResult, ...] = ()  # requirement checks, passed or failed
    isolation: str = ""  # sandbox or vm, once the build ran
    appliance_accel: str = ""  # kvm or tcg, when the vm appliance ran
    isolation_reason: str = ""  # why: the recipe's choice, or the builder's setting
    cached_from: str = ""  # the build whose artifacts these are (the result cache)


def finish(build: Build, outcome: Outcome) -> bool:
    """Ends the build. False if it had already ended: the caller's outcome
    comes too late and must not be announced."""
    if outcome.state not in TERMINAL:
        raise ValueError(f"{word(outcome.state)} is not an end state")
    if build.state in TERMINAL:
        return False
    build.state = outcome.state
    build.finished = now()
    build.accel = outcome.accel
    build.isolation = outcome.isolation
    build.appliance_accel = outcome.appliance_accel
    build.isolation_reason = outcome.isolation_reason
    build.cached_from = outcome.cached_from
    if outcome.base is not None:
        build.base = outcome.base
    build.test_commands[:] = outcome.test_commands
    if outcome.error is not None:
        build.error = outcome.error
    build.artifacts.extend(outcome.artifacts)
    build.checks.extend(outcome.checks)
    if outcome.log_artifact is not None:
        build.artifacts.append(outcome.log_artifact)
        build.log_artifact_id = outcome.log_artifact.artifact_id
    return True


def request_cancel(build: Build) -> bool:
    """Asks for the build to stop. A queued build ends at once (no worker
    holds it); a running one is marked, and its worker stops it. An ended
    build cannot be cancelled."""
    if build.state in TERMINAL:
        raise FailedPrecondition(f"build {build.id} has already ended ({word(build.state)})")
    if build.cancel_requested and build.state != BuildState.QUEUED:
        return False
    build.cancel_requested = True
    if build.state == BuildState.QUEUED:
        build.state = BuildState.CANCELLED
        build.finished = now()
    return True
