"""The rules channels move by (kiln_builder.service.channels.rules): who may
enter a channel, how long a build sat in one, where a channel falls back."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from kiln_builder.service.channels import rules
from kiln_common.builds import Build, BuildState, CheckResult, TestCommandResult
from kiln_common.channels import Channel, ChannelMove, ChannelRequirement
from kiln_common.durations import describe

T0 = datetime(2026, 12, 1, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def passed(build_id: str = "b1", **fields: object) -> Build:
    build = Build(id=build_id, state=BuildState.SUCCEEDED, image_version="1.0-1", accel="tcg")
    for name, value in fields.items():
        setattr(build, name, value)
    return build


def test_a_succeeded_tested_build_may_enter() -> None:
    assert rules.refusal(passed(), recipe_tests=True) is None


def test_a_failed_test_command_is_named_in_the_refusal() -> None:
    failing = TestCommandResult(command="curl -fs localhost", exit_status=7, passed=False)
    build = passed(state=BuildState.FAILED, test_commands=[failing])
    why = rules.refusal(build, recipe_tests=True)
    assert why == "build b1's test command `curl -fs localhost` exited 7"


def test_a_failed_check_refuses_and_an_advisory_one_does_not() -> None:
    advisory = CheckResult(rule="cloud.motd", passed=False, advisory=True)
    assert rules.refusal(passed(checks=[advisory]), recipe_tests=True) is None
    hard = CheckResult(rule="tycoon.ssh-enabled", passed=False)
    assert "tycoon.ssh-enabled" in (rules.refusal(passed(checks=[hard]), True) or "")


def test_a_build_not_boot_tested_is_refused_only_when_its_recipe_asks_for_a_boot_test() -> None:
    skipped = passed(skip_boot_test=True, accel="")
    assert "was not boot-tested" in (rules.refusal(skipped, recipe_tests=True) or "")
    assert rules.refusal(skipped, recipe_tests=False) is None
    builder_off = passed(accel="")  # the builder's boot test setting off: no test ran either
    assert "was not boot-tested" in (rules.refusal(builder_off, recipe_tests=True) or "")


def test_a_revoked_or_unfinished_build_is_refused() -> None:
    assert "revoked" in (rules.refusal(passed(revoked=T0, revoked_reason="cve"), True) or "")
    assert "running" in (rules.refusal(passed(state=BuildState.RUNNING), True) or "")


def test_time_in_a_channel_runs_from_entering_to_leaving_or_now() -> None:
    history = [
        ChannelMove(at(0), "b1", "1.0-1", "set"),
        ChannelMove(at(50), "b2", "1.0-2", "set"),
        ChannelMove(at(60), "b1", "1.0-1", "set"),
    ]
    assert rules.sat_for(history, "b1", at(100)) == 50  # the longest stint: 0..50
    assert rules.sat_for(history, "b1", at(200)) == 140  # 60..now
    assert rules.sat_for(history, "b2", at(200)) == 10
    assert rules.sat_for(history, "b3", at(200)) == 0


def test_a_required_wait_refuses_until_it_is_served() -> None:
    stable = Channel("web", "stable", requires=ChannelRequirement("candidate", 3600))
    candidate = Channel("web", "candidate", history=[ChannelMove(at(0), "b1", "1.0-1", "set")])
    channels = [candidate, stable]
    early = rules.wait_refusal(channels, stable, "b1", at(600))
    assert early is not None and "sit in candidate for 1h first" in early
    assert "has sat there 10m" in early and "50m1s to go" in early
    never = rules.wait_refusal(channels, stable, "b2", at(600)) or ""
    assert "was never there" in never
    assert rules.wait_refusal(channels, stable, "b1", at(3600)) is None
    assert rules.wait_refusal(channels, candidate, "b9", at(0)) is None  # no rule
    no_time = Channel("web", "stable", requires=ChannelRequirement("candidate", 0))
    assert "never there" in (rules.wait_refusal(channels, no_time, "b2", at(0)) or "")
    assert rules.wait_refusal(channels, no_time, "b1", at(0)) is None  # it was there


def test_a_policy_that_closes_a_loop_is_found() -> None:
    channels = [Channel("web", "candidate", requires=ChannelRequirement("stable", 60))]
    assert rules.cycle(channels, "stable", ChannelRequirement("candidate", 60)) == [
        "stable",
        "candidate",
        "stable",
    ]
    assert rules.cycle(channels, "stable", ChannelRequirement("stable", 60)) == ["stable", "stable"]
    assert rules.cycle(channels, "prod", ChannelRequirement("candidate", 60)) == []
    assert rules.cycle(channels, "stable", None) == []


def test_a_version_ends_with_its_build_number() -> None:
    assert [rules.number_of(v) for v in ("1.2-7", "1.0-rc1-12", "9", "", "1.0-x")] == [
        7,
        12,
        9,
        0,
        0,
    ]


def test_a_move_is_kept_in_history_and_a_move_to_the_same_build_is_none() -> None:
    ch = Channel("web", "stable")
    assert rules.move(ch, passed("b1"), "set", "alice", at(1))
    assert not rules.move(ch, passed("b1"), "set", "alice", at(2))
    assert (ch.build_id, ch.version, ch.since) == ("b1", "1.0-1", at(1))
    assert [(m.build_id, m.action, m.by) for m in ch.history] == [("b1", "set", "alice")]
    assert rules.move(ch, None, "revoked", "kiln", at(3)) and ch.build_id == ""


def test_history_keeps_the_newest_moves() -> None:
    ch = Channel("web", "latest")
    for n in range(rules.HISTORY + 5):
        rules.move(ch, passed(f"b{n}"), "latest", "kiln", at(n))
    assert len(ch.history) == rules.HISTORY and ch.history[-1].build_id == f"b{rules.HISTORY + 4}"


def test_a_channel_falls_back_to_its_newest_earlier_build_not_revoked() -> None:
    history = [
        ChannelMove(at(n), b, "", "set") for n, b in enumerate(["b1", "b2", "b3", "b2", "b4"])
    ]
    ch = Channel("web", "stable", build_id="b4", history=history)
    assert rules.fallback_ids(ch, {"b4"}) == ["b2", "b3", "b1"]
    assert rules.fallback_ids(ch, {"b4", "b2"}) == ["b3", "b1"]


def test_channels_are_listed_latest_first_then_by_name() -> None:
    channels: list[Channel] = []
    for name in ("stable", "latest", "candidate"):
        rules.channel_of(channels, "web", name)
    assert [c.channel for c in channels] == ["latest", "candidate", "stable"]


def test_durations_read_back_in_two_units() -> None:
    assert [describe(s) for s in (0, 59, 3600, 90061)] == ["0s", "59s", "1h", "1d1h"]
