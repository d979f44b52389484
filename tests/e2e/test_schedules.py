"""Schedules for real, through `kiln up` (nats-server, storage and builder
processes) and `kiln schedule`: the clock is nats-server's own message
scheduler. A schedule fires once per due time with two builders, also when
one is SIGKILLed at a firing, and once (not once per missed time) after NATS
was down across due times; a schedule whose runs fail pauses itself, says
why, and fires again once resumed; another tenant's schedule is not there.

The recipe's base is an artifact that does not exist: each run fails at
once, reading its inputs (a real run: fired, recorded, counted), so these
tests measure the clock, not builds."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import signal
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import nats
import pytest
from support import event_data, kill_part, kiln, kiln_up, restart_dead_parts, wait_until

from kiln_common.ids import new_id
from kiln_common.proc import pid_alive, stop_pid
from kiln_devstack.devservers import free_port
from kiln_devstack.stack import Stack, start_builder

pytestmark = [pytest.mark.e2e]

ACK_WAIT = "3"  # seconds before a dead builder's tick goes to another

RECIPE = """\
name: ticking
version: "1.0"
from:
  image: {artifact: ARTIFACT}
outputs: [qcow2]
"""


@pytest.fixture
def env(tmp_path: Path) -> Iterator[dict[str, str]]:
    with kiln_up(tmp_path, KILN_BUILDER_ACK_WAIT_SECONDS=ACK_WAIT,
                 KILN_BUILDER_SCHEDULE_MIN_SECONDS="1") as environ:  # fmt: skip
        yield environ


def stack_of(env: dict[str, str]) -> Stack:
    found = Stack.load(Path(env["KILN_HOME"]))
    assert found is not None
    return found


def failing_recipe(where: Path) -> Path:
    where.mkdir(parents=True, exist_ok=True)
    path = where / "recipe.yaml"
    path.write_text(RECIPE.replace("ARTIFACT", new_id()))  # stored nowhere
    return path


def add(env: dict[str, str], recipe: Path, *clock: str) -> str:
    return kiln(env, "schedule", "add", str(recipe), *clock).stdout.strip()


def runs(env: dict[str, str], schedule_id: str) -> list[dict[str, object]]:
    """Oldest first."""
    found = json.loads(kiln(env, "schedule", "runs", schedule_id, "--json").stdout)
    return list(reversed(found))


def fired(run: dict[str, object]) -> float:
    return datetime.fromisoformat(str(run["time"]).replace("Z", "+00:00")).timestamp()


def clock_runs(env: dict[str, str], schedule_id: str, settled: bool = False) -> list[float]:
    """When each of the clock's runs fired, oldest first (settled: once every
    run has ended, each having failed reading its inputs)."""
    if settled:
        wait_until("every run to end", lambda: all(r["outcome"] != "running"
                   for r in runs(env, schedule_id)), timeout=30, interval=0.5)  # fmt: skip
    found = [r for r in runs(env, schedule_id) if not r.get("manual")]
    if settled:
        assert all(r["outcome"] == "failed" for r in found), found
    return [fired(r) for r in found]


def assert_every(times: list[float], every: float) -> None:
    """One run per due time: consecutive runs one interval apart, none doubled
    (the server rounds a due time to the second: half a second either way)."""
    gaps = [round(b - a, 1) for a, b in itertools.pairwise(times)]
    assert all(every - 1.0 <= gap <= every + 1.0 for gap in gaps), gaps


async def next_due(url: str, schedule_id: str) -> float:
    """The schedule's next due time, as the server announced it on its last tick."""
    nc = await nats.connect(url)
    try:
        last = await nc.jetstream().get_last_msg(
            "KILN_SCHEDULES", f"kiln.schedules.fire.{schedule_id}"
        )
        due = (last.headers or {})["Nats-Schedule-Next"]
        return datetime.fromisoformat(due.replace("Z", "+00:00")).timestamp()
    finally:
        await nc.close()


def test_two_builders_fire_once_per_due_time_also_when_one_is_killed_at_a_firing(
    env: dict[str, str], tmp_path: Path
) -> None:
    stack = stack_of(env)
    own = {k: v for k, v in env.items() if k.startswith("KILN_BUILDER_")}
    other = start_builder(stack, f"127.0.0.1:{free_port()}", tmp_path / "b.log",
                          {**own, "KILN_BUILDER_WORKER_NAME": "b"})  # fmt: skip
    try:
        every = 6.0  # longer than ACK_WAIT: a killed builder's tick is redelivered first
        schedule_id = add(env, failing_recipe(tmp_path / "r"), "--every", "6s",
                          "--pause-after", "100")  # fmt: skip
        wait_until("two runs", lambda: len(clock_runs(env, schedule_id)) >= 2, timeout=30)
        due = asyncio.run(next_due(stack.nats_url, schedule_id))
        time.sleep(max(0.0, due - time.time()))
        os.kill(other, signal.SIGKILL)  # at the firing: it may hold the tick
        wait_until("the killed builder gone", lambda: not pid_alive(other), timeout=10)
        wait_until("three runs after the kill",
                   lambda: sum(t >= due - 0.5 for t in clock_runs(env, schedule_id)) >= 3,
                   timeout=40)  # fmt: skip
        kiln(env, "schedule", "pause", schedule_id)
    finally:
        stop_pid(other)
    times = clock_runs(env, schedule_id, settled=True)
    assert_every(times, every)
    assert sum(abs(t - due) < 1.0 for t in times) == 1  # the due time of the kill: once
    numbers = [r["number"] for r in runs(env, schedule_id)]
    assert len(numbers) == len(set(numbers))


def test_a_due_time_missed_while_nats_was_down_is_caught_up_once(
    env: dict[str, str], tmp_path: Path
) -> None:
    home = Path(env["KILN_HOME"])
    schedule_id = add(env, failing_recipe(tmp_path / "r"), "--every", "4s",
                      "--pause-after", "100")  # fmt: skip
    wait_until("a run", lambda: len(clock_runs(env, schedule_id)) >= 1, timeout=20)
    kill_part(home, "nats")
    down_at = time.time()
    time.sleep(10)  # two due times pass while NATS is down
    restart_dead_parts(env)
    up_at = time.time()
    wait_until("two runs after the restart",
               lambda: sum(t > up_at - 1 for t in clock_runs(env, schedule_id)) >= 2,
               timeout=40)  # fmt: skip
    kiln(env, "schedule", "pause", schedule_id)
    times = clock_runs(env, schedule_id, settled=True)
    after = [t for t in times if t > down_at]
    assert after[0] - down_at >= 9  # nothing fired while it was down
    assert after[1] - after[0] >= 3  # the missed due times: one catch-up, then the clock
    assert_every(after[1:], 4.0)


def test_a_failing_schedule_pauses_itself_says_why_and_fires_again_once_resumed(
    env: dict[str, str], tmp_path: Path
) -> None:
    stack = stack_of(env)
    schedule_id = add(env, failing_recipe(tmp_path / "r"), "--every", "2s")  # pauses after 3

    def paused() -> bool:
        shown = json.loads(kiln(env, "schedule", "show", schedule_id, "--json").stdout)
        return bool(shown["state"] == "paused")

    wait_until("the schedule to pause itself", paused, timeout=30)
    shown = json.loads(kiln(env, "schedule", "show", schedule_id, "--json").stdout)
    assert shown["failures"] == 3
    assert shown["paused_reason"].startswith("3 runs in a row failed; the last: its inputs")
    assert len(runs(env, schedule_id)) == 3
    events = event_data(stack.nats_url, "schedule.paused", schedule_id)
    assert [e["reason"] for e in events] == [shown["paused_reason"]]
    refused = kiln(env, "schedule", "run", schedule_id, check=False)
    assert refused.returncode == 1 and "is paused" in refused.stderr
    time.sleep(3)
    assert len(runs(env, schedule_id)) == 3  # its clock stopped

    resumed = json.loads(kiln(env, "schedule", "resume", schedule_id, "--json").stdout)
    assert resumed["state"] == "active" and not resumed.get("failures")
    wait_until("a run after resuming", lambda: len(runs(env, schedule_id)) > 3, timeout=20)
    listed = json.loads(kiln(env, "schedule", "ls", "--json").stdout)
    assert [s["id"] for s in listed] == [schedule_id]
    kiln(env, "schedule", "rm", schedule_id)
    gone = kiln(env, "schedule", "show", schedule_id, check=False)
    assert gone.returncode == 4 and f"schedule {schedule_id} does not exist" in gone.stderr


def test_another_tenants_schedule_is_not_there(env: dict[str, str], tmp_path: Path) -> None:
    schedule_id = add(env, failing_recipe(tmp_path / "r"), "--cron", "0 3 * * *",
                      "--tz", "Europe/Amsterdam")  # fmt: skip
    token = kiln(env, "token", "create", "--tenant", "other", "--role", "builder").stdout.strip()
    stranger = {**env, "KILN_TOKEN": token}
    unknown = new_id()
    for verb in ("show", "runs", "pause", "resume", "run", "rm"):
        theirs = kiln(stranger, "schedule", verb, schedule_id, check=False)
        none = kiln(stranger, "schedule", verb, unknown, check=False)
        assert theirs.returncode == none.returncode == 4
        assert theirs.stderr.replace(schedule_id, unknown) == none.stderr
    assert json.loads(kiln(stranger, "schedule", "ls", "--json").stdout) == []
    shown = json.loads(kiln(env, "schedule", "show", schedule_id, "--json").stdout)
    assert (shown["state"], shown["cron"], shown["time_zone"]) == ("active", "0 3 * * *",
                                                                   "Europe/Amsterdam")  # fmt: skip
    bad = kiln(env, "schedule", "add", str(tmp_path / "r/recipe.yaml"), "--cron", "0 3 * *",
               check=False)  # fmt: skip
    assert bad.returncode == 2 and "is not a cron expression" in bad.stderr
