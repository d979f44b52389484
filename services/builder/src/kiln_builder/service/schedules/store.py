"""Schedules, their runs and their recipes in NATS: any builder pod answers
for any schedule, and a restart loses nothing. Records change by
compare-and-set, as build records do (service.records)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable

from nats.js import JetStreamContext
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError, ObjectNotFoundError
from nats.js.kv import KeyValue
from nats.js.object_store import ObjectStore

from kiln_client import wire
from kiln_common import jetstream
from kiln_common.errors import FailedPrecondition, NotFound
from kiln_common.ids import check_id
from kiln_common.schedules import Schedule, ScheduleRun
from kiln_recipe.source import RecipeSource

SCHEDULES_BUCKET = "kiln_schedules"
RUNS_BUCKET = "kiln_schedule_runs"
RECIPES_BUCKET = "kiln_schedule_recipes"
RUNS_HISTORY = 1  # each run is its own key
CAS_ATTEMPTS = 20


def missing(schedule_id: str) -> NotFound:
    """An unknown schedule, and another tenant's: the same words for both."""
    return NotFound(f"schedule {schedule_id} does not exist")


def _run_key(schedule_id: str, number: int) -> str:
    return f"{schedule_id}.{number:020d}"  # sorts by number


class ScheduleStore:
    def __init__(
        self, js: JetStreamContext, schedules: KeyValue, runs: KeyValue, recipes: ObjectStore
    ) -> None:
        self._js = js
        self._schedules = schedules
        self._runs = runs
        self._recipes = recipes

    @classmethod
    async def open(cls, js: JetStreamContext, replicas: int = 1) -> ScheduleStore:
        return cls(
            js,
            await jetstream.key_value(js, SCHEDULES_BUCKET, replicas=replicas),
            await jetstream.key_value(js, RUNS_BUCKET, replicas=replicas),
            await jetstream.object_store(js, RECIPES_BUCKET, replicas=replicas),
        )

    # ---- schedules ---------------------------------------------------------------------

    async def create(self, schedule: Schedule, recipe: RecipeSource) -> None:
        await self._recipes.put(schedule.id, wire.recipe_bytes(recipe))
        await self._schedules.create(schedule.id, wire.schedule_bytes(schedule))

    async def get(self, schedule_id: str) -> Schedule:
        return (await self._entry(schedule_id))[0]

    async def _entry(self, schedule_id: str) -> tuple[Schedule, int]:
        check_id(schedule_id, "schedule id")
        try:
            entry = await self._schedules.get(schedule_id)
        except KeyNotFoundError:
            raise missing(schedule_id) from None
        return wire.schedule_from_bytes(entry.value or b""), int(entry.revision or 0)

    async def mutate(
        self, schedule_id: str, change: Callable[[Schedule], bool]
    ) -> tuple[Schedule, bool]:
        """Applies change to the newest record, stored if nothing changed it
        meanwhile (else read again); whether this call changed it."""
        for _ in range(CAS_ATTEMPTS):
            schedule, revision = await self._entry(schedule_id)
            if not change(schedule):
                return schedule, False
            try:
                await self._schedules.update(
                    schedule_id, wire.schedule_bytes(schedule), last=revision
                )
                return schedule, True
            except KeyWrongLastSequenceError:
                continue
        raise FailedPrecondition(f"schedule {schedule_id} is changing too fast to update")

    async def delete(self, schedule_id: str) -> None:
        await self._schedules.purge(schedule_id)
        for key in await self._run_keys(schedule_id):
            await self._runs.purge(key)
        with contextlib.suppress(ObjectNotFoundError):
            await self._recipes.delete(schedule_id)

    async def all(self) -> list[Schedule]:
        found = []
        for key in await jetstream.mapped(lambda: jetstream.kv_keys(self._js, SCHEDULES_BUCKET)):
            try:
                found.append(await self.get(key))
            except NotFound:
                continue  # deleted while we listed
        return sorted(found, key=lambda s: s.id)

    async def recipe(self, schedule_id: str) -> RecipeSource:
        try:
            found = await self._recipes.get(schedule_id)
        except ObjectNotFoundError:
            raise FailedPrecondition(f"the recipe of schedule {schedule_id} is missing") from None
        return wire.recipe_from_bytes(found.data or b"")

    # ---- runs ---------------------------------------------------------------------------

    async def start_run(self, run: ScheduleRun) -> tuple[ScheduleRun, bool]:
        """Records a tick's run; the run already recorded for it (a tick
        handled again) and False if there is one."""
        key = _run_key(run.schedule_id, run.number)
        try:
            await self._runs.create(key, wire.run_bytes(run))
            return run, True
        except KeyWrongLastSequenceError:
            entry = await self._runs.get(key)
            return wire.run_from_bytes(entry.value or b""), False

    async def forget_run(self, run: ScheduleRun) -> None:
        """A run that does not happen after all (a stale tick's)."""
        await self._runs.purge(_run_key(run.schedule_id, run.number))

    async def run(self, schedule_id: str, number: int) -> ScheduleRun:
        try:
            entry = await self._runs.get(_run_key(schedule_id, number))
        except KeyNotFoundError:
            raise NotFound(f"schedule {schedule_id} has no run {number}") from None
        return wire.run_from_bytes(entry.value or b"")

    async def settle_run(
        self, schedule_id: str, number: int, change: Callable[[ScheduleRun], bool]
    ) -> tuple[ScheduleRun, bool]:
        """Applies change to the run, stored if nothing changed it meanwhile
        (else read again): a run moves out of `running` once, whoever tries."""
        key = _run_key(schedule_id, number)
        for _ in range(CAS_ATTEMPTS):
            try:
                entry = await self._runs.get(key)
            except KeyNotFoundError:
                raise NotFound(f"schedule {schedule_id} has no run {number}") from None
            run = wire.run_from_bytes(entry.value or b"")
            if not change(run):
                return run, False
            try:
                await self._runs.update(key, wire.run_bytes(run), last=int(entry.revision or 0))
                return run, True
            except KeyWrongLastSequenceError:
                continue
        raise FailedPrecondition(f"run {number} of schedule {schedule_id} is changing too fast")

    async def _run_keys(self, schedule_id: str) -> list[str]:
        """The schedule's run keys (a purged one too: its marker), asked of the
        stream by subject, not read from every schedule's runs."""
        prefix = f"$KV.{RUNS_BUCKET}."
        info = await jetstream.mapped(
            lambda: self._js.stream_info(f"KV_{RUNS_BUCKET}", f"{prefix}{schedule_id}.>")
        )
        return sorted(s.removeprefix(prefix) for s in (info.state.subjects or {}))

    async def runs(self, schedule_id: str) -> list[ScheduleRun]:
        """Newest first."""
        found = []
        for key in reversed(await self._run_keys(schedule_id)):
            try:
                entry = await self._runs.get(key)
            except KeyNotFoundError:
                continue
            found.append(wire.run_from_bytes(entry.value or b""))
        return found
