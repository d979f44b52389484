"""A schedule and its runs, as every part of Kiln speaks of them (plain
dataclasses; kiln_client.wire converts them to and from the Schedules API's
messages field by field, as it does builds)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

ACTIVE = "active"
PAUSED = "paused"
DEFAULT_PAUSE_AFTER = 3  # failed runs in a row, as EC2 Image Builder pauses

# A run's outcome.
RUNNING = "running"  # fired: inputs read, its build submitted and not ended
BUILT = "built"
UNCHANGED = "unchanged"
FAILED = "failed"


@dataclass
class Schedule:
    id: str = ""
    name: str = ""  # the recipe's
    tenant: str = ""
    cron: str = ""
    time_zone: str = ""
    every: str = ""
    state: str = ACTIVE
    paused_reason: str = ""
    failures: int = 0  # failed runs in a row
    pause_after: int = DEFAULT_PAUSE_AFTER
    created: datetime | None = None
    recipe_digest: str = ""
    last_build: str = ""  # the last successful build
    last_fingerprint: str = ""  # its fingerprint's digest
    last_run: datetime | None = None
    role: str = ""  # its maker's role, which its builds are submitted with


@dataclass
class ScheduleRun:
    schedule_id: str = ""
    number: int = 0  # the clock's tick (its stream sequence)
    time: datetime | None = None
    outcome: str = RUNNING
    build_id: str = ""
    fingerprint: str = ""
    error: str = ""
    manual: bool = False
