"""The schedules' clock is JetStream's message scheduler (nats-server 2.12+,
cron time zones 2.14+; ADR-51), not a loop of Kiln's own. A schedule is one
message on `kiln.schedules.clock.<id>` in the stream KILN_SCHEDULES, whose
headers say when (`Nats-Schedule`: `@every 3600s` or a 6-field cron, with
`Nats-Schedule-Time-Zone`) and where (`Nats-Schedule-Target`:
`kiln.schedules.fire.<id>`). The server itself publishes a tick there at
each due time, so a clock fires once however many builder pods there are,
keeps firing while every pod restarts, and, after the server was down
across a due time, fires once, not once per missed time (it skips ahead).

Every pod pulls ticks from one durable consumer: each tick goes to one pod,
and to another if that pod dies before acking it. A tick's stream sequence
numbers its run, so a tick handled twice makes one run (runner). Ticks are
kept a week (a per-message TTL); a tick older than the newest of its
schedule is not run (runner): builders that were all down across several due
times catch up once. RunSchedule's ticks go to `kiln.schedules.now.<id>`."""

from __future__ import annotations

import re
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import nats.js.errors as jerr
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, StorageType, StreamConfig

from kiln_common import jetstream
from kiln_common.durations import parse_seconds
from kiln_common.errors import InvalidArgument
from kiln_common.schedules import Schedule

STREAM = "KILN_SCHEDULES"
SUBJECTS = "kiln.schedules.>"
CLOCK_PREFIX = "kiln.schedules.clock."
FIRE_PREFIX = "kiln.schedules.fire."
NOW_PREFIX = "kiln.schedules.now."  # RunSchedule's ticks
CONSUMER = "schedulers"
TICK_TTL = "168h"  # a tick not taken in a week is dropped
MAX_DELIVER = 10  # a tick whose handling never ends (NATS away each time) is dropped
MAX_EVERY = 366 * 86400
_SECOND = re.compile(r"[0-9]|[1-5][0-9]")  # a cron's seconds: one second a minute at most
_PREDEFINED = {"@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly"}
_CRON_FIELD = re.compile(r"[0-9A-Za-z*/,-]{1,64}")


async def ensure(js: JetStreamContext, ack_wait: float, replicas: int = 1) -> None:
    # A clock is published with a rollup of its subject: one message each.
    config = StreamConfig(
        name=STREAM, subjects=[SUBJECTS], allow_msg_schedules=True, allow_msg_ttl=True,
        allow_rollup_hdrs=True, storage=StorageType.FILE,
    )  # fmt: skip
    await jetstream.ensure_stream(js, config, replicas)
    consumer = ConsumerConfig(
        durable_name=CONSUMER, filter_subjects=[FIRE_PREFIX + ">", NOW_PREFIX + ">"],
        ack_policy=AckPolicy.EXPLICIT, ack_wait=ack_wait, deliver_policy=DeliverPolicy.ALL,
        max_ack_pending=64, max_deliver=MAX_DELIVER,
    )  # fmt: skip
    await js.add_consumer(STREAM, consumer)


def pattern(cron: str, time_zone: str, every: str, min_every: int = 60) -> tuple[str, str]:
    """The Nats-Schedule pattern and time zone of a schedule's clock; an
    InvalidArgument names what is wrong. A clock fires at most every
    min_every seconds (an interval), or once a minute (a cron): each firing
    reads the recipe's sources, and records a run."""
    if bool(cron) == bool(every):
        raise InvalidArgument("give exactly one of cron (with time_zone) and every")
    if every:
        if time_zone:
            raise InvalidArgument("time_zone: for cron schedules only")
        seconds = parse_seconds(every)
        if not min_every <= seconds <= MAX_EVERY:
            raise InvalidArgument(f"every: {every} is not between {min_every}s and 366d")
        return f"@every {seconds}s", ""
    if time_zone:
        try:
            ZoneInfo(time_zone)
        except (ZoneInfoNotFoundError, ValueError):
            raise InvalidArgument(
                f"time_zone: {time_zone[:64]!r} is not a known time zone"
            ) from None
    if cron in _PREDEFINED:
        return cron, time_zone
    fields = cron.split()
    if len(fields) not in (5, 6) or not all(_CRON_FIELD.fullmatch(f) for f in fields):
        raise InvalidArgument(
            f"cron: {cron[:100]!r} is not a cron expression (5 fields: minute hour day month"
            " weekday, or 6 with seconds first, or @daily, @hourly, @weekly, @monthly, @yearly)"
        )
    if len(fields) == 6 and not _SECOND.fullmatch(fields[0]):
        raise InvalidArgument(f"cron: the seconds field {fields[0]!r} must be one second, 0-59")
    return " ".join(["0", *fields] if len(fields) == 5 else fields), time_zone


def clock_headers(schedule: Schedule) -> dict[str, str]:
    when, zone = pattern(schedule.cron, schedule.time_zone, schedule.every, 0)
    headers = {
        "Nats-Schedule": when, "Nats-Schedule-Target": FIRE_PREFIX + schedule.id,
        "Nats-Schedule-TTL": TICK_TTL, "Nats-Rollup": "sub",
    }  # fmt: skip
    if zone:
        headers["Nats-Schedule-Time-Zone"] = zone
    return headers


async def start(js: JetStreamContext, schedule: Schedule) -> None:
    """Sets (or resets) the schedule's clock."""
    await js.publish(
        CLOCK_PREFIX + schedule.id, schedule.id.encode(), headers=clock_headers(schedule)
    )


async def stop(js: JetStreamContext, schedule_id: str) -> None:
    """Removes the clock (paused or deleted): no tick comes from it any more."""
    await js.purge_stream(STREAM, subject=CLOCK_PREFIX + schedule_id)


async def tick_now(js: JetStreamContext, schedule_id: str) -> None:
    """A tick published by hand (RunSchedule): handled as the clock's are."""
    await js.publish(NOW_PREFIX + schedule_id, schedule_id.encode(),
                     headers={"Nats-TTL": TICK_TTL})  # fmt: skip


async def newest_tick(js: JetStreamContext, schedule_id: str) -> int:
    """The stream sequence of the schedule's newest clock tick (0: none)."""
    try:
        return int((await js.get_last_msg(STREAM, FIRE_PREFIX + schedule_id)).seq or 0)
    except jerr.NotFoundError:
        return 0
