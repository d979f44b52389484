"""A schedule's clock as nats-server's message scheduler takes it: the
pattern and headers made from `--cron`/`--tz`/`--every`, and every refusal
(before anything is kept) naming what is wrong."""

from __future__ import annotations

import pytest

from kiln_builder.service.schedules import clock
from kiln_common.errors import InvalidArgument
from kiln_common.schedules import Schedule


@pytest.mark.parametrize(
    ("cron", "zone", "every", "pattern"),
    [
        ("0 3 * * *", "", "", "0 0 3 * * *"),  # 5 fields: the server's 6, seconds first
        ("30 0 3 * * mon-fri", "Europe/Amsterdam", "", "30 0 3 * * mon-fri"),
        ("@daily", "UTC", "", "@daily"),
        ("", "", "90s", "@every 90s"),
        ("15 0 3 * * *", "", "", "15 0 3 * * *"),
        ("", "", "1d", "@every 86400s"),
    ],
)
def test_a_clock_becomes_the_servers_pattern(
    cron: str, zone: str, every: str, pattern: str
) -> None:
    assert clock.pattern(cron, zone, every) == (pattern, zone)


@pytest.mark.parametrize(
    ("cron", "zone", "every", "words"),
    [
        ("", "", "", "exactly one"),
        ("@daily", "", "1h", "exactly one"),
        ("0 3 * *", "", "", "is not a cron expression"),
        ("0 3 * * * * *", "", "", "is not a cron expression"),
        ("0 3 * * $(reboot)", "", "", "is not a cron expression"),
        ("0 3 * * *", "Mars/Olympus", "", "is not a known time zone"),
        ("", "UTC", "1h", "for cron schedules only"),
        ("", "", "30s", "between 60s and 366d"),  # the builder's schedule_min_seconds
        ("", "", "400d", "between 60s and 366d"),
        ("* 3 * * * *", "", "", "must be one second"),
        ("*/5 3 * * * *", "", "", "must be one second"),
        ("", "", "soon", "is not a duration"),
    ],
)
def test_a_bad_clock_is_refused_saying_why(cron: str, zone: str, every: str, words: str) -> None:
    with pytest.raises(InvalidArgument, match=words):
        clock.pattern(cron, zone, every)


def test_the_clock_message_targets_the_schedules_fire_subject_and_rolls_up() -> None:
    headers = clock.clock_headers(Schedule(id="s1", cron="0 3 * * *", time_zone="Asia/Tokyo"))
    assert headers == {
        "Nats-Schedule": "0 0 3 * * *",
        "Nats-Schedule-Target": "kiln.schedules.fire.s1",
        "Nats-Schedule-TTL": clock.TICK_TTL,
        "Nats-Rollup": "sub",
        "Nats-Schedule-Time-Zone": "Asia/Tokyo",
    }
