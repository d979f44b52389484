"""The build lifecycle: one table of names, and transitions that say whether
they changed the record (what makes one terminal event per build)."""

from __future__ import annotations

import pytest

from kiln_api.builder.v1 import builder_pb2 as pb
from kiln_common import lifecycle
from kiln_common.builds import Build, BuildError, BuildState, TestCommandResult
from kiln_common.errors import FailedPrecondition
from kiln_common.lifecycle import STATES, TERMINAL, Outcome


def queued() -> Build:
    return Build(id="b1", state=BuildState.QUEUED)


def test_every_state_has_a_word_an_event_and_an_exit_code() -> None:
    for value in pb.BuildState.values():  # every state the API has, the domain has
        value = BuildState(value)
        if value == BuildState.UNSPECIFIED:
            continue
        info = STATES[value]
        assert info.event.startswith("build.")
        assert lifecycle.state_of(info.word) == value
    assert {STATES[s].exit_code for s in TERMINAL} == {0, 1, 3}
    assert lifecycle.state_of("") == BuildState.UNSPECIFIED
    with pytest.raises(ValueError, match="unknown build state"):
        lifecycle.state_of("exploded")


def test_only_the_first_finish_ends_a_build() -> None:
    build = queued()
    assert lifecycle.start(build, "w1", 1)
    failed = Outcome(BuildState.FAILED, BuildError(message="boom"))
    assert lifecycle.finish(build, failed)
    # A second pod, or the max-deliveries advisory, comes too late.
    assert not lifecycle.finish(build, failed)
    assert not lifecycle.finish(build, Outcome(BuildState.SUCCEEDED))
    assert build.state == BuildState.FAILED and build.error.message == "boom"


def test_a_worker_does_not_take_an_ended_or_cancelled_build() -> None:
    build = queued()
    assert lifecycle.request_cancel(build)
    assert build.state == BuildState.CANCELLED
    assert not lifecycle.start(build, "w1", 1)
    with pytest.raises(FailedPrecondition, match="already ended"):
        lifecycle.request_cancel(build)


def test_a_running_build_is_only_marked_for_cancel_once() -> None:
    build = queued()
    lifecycle.start(build, "w1", 1)
    assert lifecycle.request_cancel(build)
    assert build.state == BuildState.RUNNING and build.cancel_requested
    assert not lifecycle.request_cancel(build)


def test_only_the_attempt_holding_a_build_hands_it_back() -> None:
    build = queued()
    lifecycle.start(build, "w1", 1)
    lifecycle.start(build, "w2", 2)  # w1 presumed dead; w2 took over
    assert not lifecycle.requeue(build, "w1", 1)
    assert lifecycle.requeue(build, "w2", 2, BuildError(message="storage away"))
    assert build.state == BuildState.QUEUED and build.error.message == "storage away"


def test_finish_takes_only_end_states() -> None:
    with pytest.raises(ValueError):
        lifecycle.finish(queued(), Outcome(BuildState.RUNNING))


def test_finish_records_the_boot_test_commands_of_a_failed_build() -> None:
    build = queued()
    lifecycle.start(build, "w1", 1)
    results = (
        TestCommandResult(command="true", exit_status=0, passed=True),
        TestCommandResult(command="exit 3", exit_status=3, output="why\n"),
    )
    error = BuildError(message="test command 2 `exit 3` exited with status 3")
    assert lifecycle.finish(build, Outcome(BuildState.FAILED, error, test_commands=results))
    assert [(t.command, t.exit_status, t.passed) for t in build.test_commands] == [
        ("true", 0, True),
        ("exit 3", 3, False),
    ]
