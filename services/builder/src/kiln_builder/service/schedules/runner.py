"""What a tick does. Every builder pod pulls ticks from the clock's one
durable consumer (clock); a tick makes one run, numbered by its stream
sequence, whichever pod takes it and however often: the run is created
atomically, and a tick taken again (its pod died before acking it) goes on
with the run it finds unless that one has its build or outcome already.

A run reads the recipe's inputs first (service.inputs, as a build does). If
they equal those of the schedule's last successful build, the run is
`unchanged`: no build, no artifacts, an event build.skipped. Otherwise it
submits the recipe as the schedule's maker (tenant and role), with the
tick's idempotency key, so one tick never queues two builds; the build is
tested and published to its recipe's targets as any build is. Its end
settles the run (outcomes)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import tempfile
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

from nats.aio.msg import Msg

from kiln_builder.service import inputs
from kiln_builder.service.core import BuilderCore
from kiln_builder.service.schedules import clock
from kiln_builder.service.schedules.core import ScheduleCore, schedule_data
from kiln_builder.service.schedules.outcomes import Outcomes
from kiln_builder.service.settings import BuilderSettings
from kiln_builder.storage import StorageAccess
from kiln_client.credentials import acting_for
from kiln_common import jetstream
from kiln_common.auth.identity import Identity, Role, acting_as
from kiln_common.builds import Fingerprint
from kiln_common.errors import KilnError, NotFound, Unavailable
from kiln_common.lifecycle import now
from kiln_common.schedules import PAUSED, RUNNING, UNCHANGED, Schedule, ScheduleRun
from kiln_recipe import RecipeError, bundle
from kiln_recipe.source import RecipeSource

log = logging.getLogger(__name__)

INPUTS_SECONDS = 120.0  # reading a run's inputs (Release files, a base's digest) at most


@contextlib.contextmanager
def as_maker(schedule: Schedule) -> Iterator[None]:
    """The schedule's calls made as its maker: its tenant, its role (with
    identities off, as no one); its storage and publisher calls for its tenant."""
    with contextlib.ExitStack() as stack:
        if schedule.role:
            maker = Identity(f"schedule {schedule.id}", schedule.tenant, Role(schedule.role),
                             "schedule")  # fmt: skip
            stack.enter_context(acting_as(maker))
        stack.enter_context(acting_for(schedule.tenant))
        yield


class Runner:
    def __init__(
        self, core: ScheduleCore, builder: BuilderCore, outcomes: Outcomes,
        settings: BuilderSettings, storage: StorageAccess,
    ) -> None:  # fmt: skip
        self.core = core
        self.store = core.store
        self.builder = builder
        self.outcomes = outcomes
        self.settings = settings
        self.storage = storage

    async def run(self) -> None:
        """Takes ticks until cancelled."""

        async def ensure() -> None:
            await clock.ensure(self.core.js, self.settings.ack_wait_seconds,
                               self.settings.nats_replicas)  # fmt: skip

        await jetstream.consume(self.core.js, clock.STREAM, clock.CONSUMER, ensure, self.take,
                                "the schedules' clock")  # fmt: skip

    async def take(self, msg: Msg) -> None:
        try:
            await self.fire(msg)
        except Exception as exc:
            if isinstance(jetstream.translate(exc) or exc, Unavailable):
                # NATS away: the tick comes back (MAX_DELIVER times at most).
                log.warning("schedule tick %s put off: %s", msg.subject, exc)
                return
            # Unexpected: acked all the same, so one bad tick does not loop; the
            # next due time fires again.
            log.exception("schedule tick %s failed", msg.subject)
        await msg.ack()

    async def fire(self, msg: Msg) -> None:
        manual = msg.subject.startswith(clock.NOW_PREFIX)
        schedule_id = msg.subject.removeprefix(clock.NOW_PREFIX if manual else clock.FIRE_PREFIX)
        number = msg.metadata.sequence.stream
        try:
            schedule = await self.store.get(schedule_id)
        except NotFound:
            return  # deleted since
        if schedule.state == PAUSED:
            return  # a tick already on its way when it was paused
        fired = msg.metadata.timestamp or now()
        run, new = await self.store.start_run(
            ScheduleRun(schedule_id, number, fired, RUNNING, manual=manual)
        )
        if not new and (run.outcome != RUNNING or run.build_id):
            return  # this tick was handled: once is enough
        if new and not manual and await clock.newest_tick(self.core.js, schedule_id) > number:
            # Ticks piled up while no builder took them: the newest runs, once.
            await self.store.forget_run(run)
            log.info("schedule %s: tick %d skipped, a later one is queued", schedule_id, number)
            return
        await self._started(schedule_id, fired)
        log.info("schedule %s fires (run %d%s)", schedule_id, number, ", by hand" if manual else "")
        with as_maker(schedule):
            await self.decide(schedule, run)

    async def decide(self, schedule: Schedule, run: ScheduleRun) -> None:
        source = await self.store.recipe(schedule.id)
        try:
            # The recipe's sources answering late or not at all fail the run
            # (the next due time tries again): they never hold the clock up.
            async with asyncio.timeout(INPUTS_SECONDS):
                found = await self._inputs(schedule, source)
        except (KilnError, RecipeError, OSError, TimeoutError) as exc:
            why = "timed out" if isinstance(exc, TimeoutError) else str(exc)
            await self.outcomes.failed(
                schedule.id, run.number, f"its inputs could not be read: {why}"
            )
            return
        if schedule.last_fingerprint == found.digest:
            await self.unchanged(schedule, run, found.digest)
            return
        try:
            build = await self.builder.submit(
                source, f"schedule-{schedule.id}-{run.number}", schedule=(schedule.id, run.number)
            )
        except Unavailable:
            raise
        except KilnError as exc:  # a quota, a role that may no longer publish
            await self.outcomes.failed(schedule.id, run.number, f"its build was refused: {exc}")
            return

        def submitted(r: ScheduleRun) -> bool:
            if r.outcome != RUNNING or r.build_id:
                return False  # its build ended first (a cached result): settled
            r.build_id, r.fingerprint = build.id, found.digest
            return True

        await self.store.settle_run(schedule.id, run.number, submitted)
        log.info("schedule %s run %d: build %s", schedule.id, run.number, build.id)

    async def _inputs(self, schedule: Schedule, source: RecipeSource) -> Fingerprint:
        with tempfile.TemporaryDirectory(prefix="kiln-schedule-") as scratch:
            recipe = bundle.load(source, Path(scratch))
            # A channel base is read as the build its channel points at now.
            based = await inputs.resolve_base(
                recipe, schedule.tenant, self.builder.channels, self.storage
            )
            return await inputs.read(
                self.settings, self.storage, based.recipe, schedule.recipe_digest
            )

    async def unchanged(self, schedule: Schedule, run: ScheduleRun, digest: str) -> None:
        def unchanged(r: ScheduleRun) -> bool:
            if r.outcome != RUNNING:
                return False
            r.outcome, r.build_id, r.fingerprint = UNCHANGED, "", digest
            return True

        _, changed = await self.store.settle_run(schedule.id, run.number, unchanged)
        if not changed:
            return

        def succeeded(s: Schedule) -> bool:
            s.failures = 0  # an unchanged run did not fail
            return True

        await self.store.mutate(schedule.id, succeeded)
        data = schedule_data(schedule, run=run.number, fingerprint=digest,
                             last_build=schedule.last_build)  # fmt: skip
        await self.core.events.publish("build.skipped", schedule.id, data)
        log.info("schedule %s run %d: inputs unchanged since build %s",
                 schedule.id, run.number, schedule.last_build)  # fmt: skip

    async def _started(self, schedule_id: str, fired: datetime) -> None:
        def ran(s: Schedule) -> bool:
            s.last_run = fired
            return True

        await self.store.mutate(schedule_id, ran)
