"""The rules of channels, pure: which builds may enter a channel, how long a
build sat in one, and how a channel moves (its history kept, the newest
HISTORY moves). The core (channels.core) reads and stores; these decide."""

from __future__ import annotations

from collections.abc import Collection
from datetime import datetime

from kiln_common import lifecycle
from kiln_common.builds import Build, BuildState
from kiln_common.channels import LATEST, Channel, ChannelMove, ChannelRequirement
from kiln_common.durations import describe

HISTORY = 200  # moves kept per channel


def channel_of(channels: list[Channel], name: str, channel: str) -> Channel:
    """The channel, added (empty) to channels if it is not there yet."""
    for found in channels:
        if found.channel == channel:
            return found
    made = Channel(name=name, channel=channel)
    channels.append(made)
    channels.sort(key=lambda c: (c.channel != LATEST, c.channel))
    return made


def refusal(build: Build, recipe_tests: bool) -> str | None:
    """Why the build may not enter a channel other than latest (None: it may).
    Only a build whose checks and test commands passed: a failed one, one
    revoked, and one that was not boot-tested though its recipe asks for a
    boot test (recipe_tests), so its test commands never ran, are refused."""
    if build.revoked is not None:
        return f"build {build.id} was revoked ({build.revoked_reason or 'no reason given'})"
    failed_tests = [t for t in build.test_commands if not t.passed]
    if failed_tests:
        first = failed_tests[0]
        how = "timed out" if first.timed_out else f"exited {first.exit_status}"
        return f"build {build.id}'s test command `{first.command}` {how}"
    failed_checks = [c.rule for c in build.checks if not c.passed and not c.advisory]
    if failed_checks:
        return f"build {build.id} failed its checks: {', '.join(failed_checks)}"
    if build.state != BuildState.SUCCEEDED:
        return f"build {build.id} {lifecycle.word(build.state)}: it has no tested image"
    if recipe_tests and not build.accel:  # no boot test ran (--no-boot-test, or the builder's)
        return f"build {build.id} was not boot-tested, which its recipe asks for"
    return None


def sat_for(history: list[ChannelMove], build_id: str, now: datetime) -> float:
    """The longest time, in seconds, build_id stayed in a channel of this history."""
    longest = 0.0
    for index, move in enumerate(history):
        if move.build_id != build_id or move.time is None:
            continue
        after = history[index + 1 :]
        left = next((m.time for m in after if m.time is not None), now)
        longest = max(longest, (left - move.time).total_seconds())
    return longest


def wait_refusal(
    channels: list[Channel], target: Channel, build_id: str, now: datetime
) -> str | None:
    """Why the target's requirement (a time in another channel) refuses the build."""
    need = target.requires
    if need is None or not need.channel:
        return None
    there = next((c for c in channels if c.channel == need.channel), None)
    history = there.history if there is not None else []
    entered = any(m.build_id == build_id for m in history)
    sat = sat_for(history, build_id, now)
    if entered and sat >= need.seconds:
        return None
    if not entered:
        return (f"{target.channel} requires a build to sit in {need.channel} for "
                f"{describe(need.seconds)} first; build {build_id} was never there")  # fmt: skip
    return (f"{target.channel} requires a build to sit in {need.channel} for "
            f"{describe(need.seconds)} first; build {build_id} has sat there "
            f"{describe(int(sat))} ({describe(int(need.seconds - sat) + 1)} to go)")  # fmt: skip


def move(ch: Channel, build: Build | None, action: str, by: str, now: datetime) -> bool:
    """Points the channel at build (None: at nothing); False if it already did."""
    build_id = build.id if build is not None else ""
    if ch.build_id == build_id:
        return False
    ch.build_id = build_id
    ch.version = build.image_version if build is not None else ""
    ch.since = now
    ch.history.append(ChannelMove(now, build_id, ch.version, action, by))
    del ch.history[:-HISTORY]
    return True


def number_of(version: str) -> int:
    """The build number an image version ends with (0 for none: "")."""
    tail = version.rsplit("-", 1)[-1]
    return int(tail) if tail.isdigit() else 0


def cycle(channels: list[Channel], channel: str, wanted: ChannelRequirement | None) -> list[str]:
    """The channels, in order, of the loop that channel requiring wanted
    would close ([] if none): a loop no build could ever enter."""
    path, seen = [channel], {channel}
    need = wanted
    while need is not None and need.channel:
        path.append(need.channel)
        if need.channel in seen:
            return path
        seen.add(need.channel)
        nxt = next((c for c in channels if c.channel == need.channel), None)
        need = nxt.requires if nxt is not None else None
    return []


def fallback_ids(ch: Channel, revoked: Collection[str]) -> list[str]:
    """The builds the channel held before, newest first, that are not revoked:
    where it falls back to when its build is revoked."""
    seen: list[str] = []
    for past in reversed(ch.history):
        if past.build_id and past.build_id not in revoked and past.build_id not in seen:
            seen.append(past.build_id)
    return seen
