"""The Schedules API's transport-free core: add, read, list, delete, pause,
resume and fire schedules, and list their runs. A schedule is its maker's
tenant's: another tenant's is NOT_FOUND in the words an unknown id gets."""

from __future__ import annotations

import builtins
import logging
from typing import Any

import nats.js.errors as jerr
from nats.js import JetStreamContext

from kiln_builder.service.core import may_publish
from kiln_builder.service.schedules import clock
from kiln_builder.service.schedules.store import ScheduleStore, missing
from kiln_common.auth.identity import caller, owner, visible
from kiln_common.errors import FailedPrecondition, InvalidArgument
from kiln_common.events import Publisher
from kiln_common.ids import new_id
from kiln_common.lifecycle import now
from kiln_common.schedules import ACTIVE, DEFAULT_PAUSE_AFTER, PAUSED, Schedule, ScheduleRun
from kiln_recipe import bundle
from kiln_recipe.source import RecipeSource

log = logging.getLogger(__name__)

MAX_PAUSE_AFTER = 100


def schedule_data(schedule: Schedule, **extra: Any) -> dict[str, Any]:
    """An event's data about a schedule."""
    return {"id": schedule.id, "name": schedule.name, "state": schedule.state, **extra}


class ScheduleCore:
    def __init__(
        self, js: JetStreamContext, store: ScheduleStore, events: Publisher, min_every: int = 60
    ) -> None:
        self.js = js
        self.store = store
        self.events = events
        self.min_every = min_every  # seconds: the shortest interval a schedule may fire at

    async def add(
        self, source: RecipeSource, cron: str = "", time_zone: str = "", every: str = "",
        pause_after: int = 0,
    ) -> Schedule:  # fmt: skip
        recipe, digest = bundle.check(source)  # RecipeError: INVALID_ARGUMENT
        may_publish(recipe)  # its builds will be submitted with its maker's role
        clock.pattern(cron, time_zone, every, self.min_every)  # before anything is kept
        if pause_after > MAX_PAUSE_AFTER:
            raise InvalidArgument(f"pause_after: at most {MAX_PAUSE_AFTER}")
        who = caller()
        schedule = Schedule(
            id=new_id(), name=recipe.name, tenant=owner(), cron=cron, time_zone=time_zone,
            every=every, state=ACTIVE, pause_after=pause_after or DEFAULT_PAUSE_AFTER,
            created=now(), recipe_digest=digest, role=str(who.role) if who else "",
        )  # fmt: skip
        try:  # the clock first: the server has the last word on a cron
            await clock.start(self.js, schedule)
        except jerr.BadRequestError as exc:
            raise InvalidArgument(f"the scheduler refuses the clock: {exc.description}") from None
        try:
            await self.store.create(schedule, bundle.normalised(source))
        except BaseException:
            await clock.stop(self.js, schedule.id)  # no clock without its schedule
            raise
        await self.events.publish("schedule.added", schedule.id, schedule_data(schedule))
        log.info("schedule %s added: %s %s", schedule.id, recipe.name, cron or f"every {every}")
        return schedule

    async def get(self, schedule_id: str) -> Schedule:
        schedule = await self.store.get(schedule_id)
        if not visible(schedule.tenant):
            raise missing(schedule_id)
        return schedule

    async def list(self) -> list[Schedule]:
        return [s for s in await self.store.all() if visible(s.tenant)]

    async def delete(self, schedule_id: str) -> Schedule:
        schedule = await self.get(schedule_id)
        await clock.stop(self.js, schedule_id)
        await self.store.delete(schedule_id)
        await self.events.publish("schedule.deleted", schedule.id, schedule_data(schedule))
        return schedule

    async def pause(self, schedule_id: str, reason: str = "paused by hand") -> Schedule:
        await self.get(schedule_id)
        return await self.stop(schedule_id, reason)

    async def stop(self, schedule_id: str, reason: str) -> Schedule:
        """Pauses the schedule (its clock removed), saying why; announced once."""

        def pause(s: Schedule) -> bool:
            if s.state == PAUSED:
                return False
            s.state, s.paused_reason = PAUSED, reason
            return True

        schedule, changed = await self.store.mutate(schedule_id, pause)
        await clock.stop(self.js, schedule_id)  # also when another call paused it first
        if changed:
            data = schedule_data(schedule, reason=reason)
            await self.events.publish("schedule.paused", schedule.id, data)
            log.warning("schedule %s paused: %s", schedule_id, reason)
        return schedule

    async def resume(self, schedule_id: str) -> Schedule:
        await self.get(schedule_id)

        def resume(s: Schedule) -> bool:
            if s.state == ACTIVE:
                return False
            s.state, s.paused_reason, s.failures = ACTIVE, "", 0
            return True

        schedule, changed = await self.store.mutate(schedule_id, resume)
        await clock.start(self.js, schedule)
        if changed:
            await self.events.publish("schedule.resumed", schedule.id, schedule_data(schedule))
        return schedule

    async def run_now(self, schedule_id: str) -> Schedule:
        schedule = await self.get(schedule_id)
        if schedule.state == PAUSED:
            raise FailedPrecondition(
                f"schedule {schedule_id} is paused ({schedule.paused_reason}): resume it first"
            )
        await clock.tick_now(self.js, schedule_id)
        return schedule

    async def runs(self, schedule_id: str) -> builtins.list[ScheduleRun]:
        await self.get(schedule_id)
        return await self.store.runs(schedule_id)
