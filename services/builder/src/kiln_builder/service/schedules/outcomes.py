"""What a scheduled build's end does to its run and schedule. Builder pods
read build.succeeded, build.failed and build.cancelled from the events
stream through one durable consumer (so each end is settled once, and one
that came while every pod was down is settled later), and settle the run of
a build that names a schedule from its record (the record, not the event,
is believed). A success records the build's fingerprint as the schedule's
last; a failure counts, and `pause_after` failures in a row pause the
schedule with the reason, and an event schedule.paused."""

from __future__ import annotations

import logging

from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from kiln_builder.service.core import BuilderCore
from kiln_builder.service.schedules.core import ScheduleCore
from kiln_common import jetstream, lifecycle
from kiln_common.builds import Build, BuildState
from kiln_common.errors import NotFound, Unavailable
from kiln_common.events import STREAM, from_json, subject_for
from kiln_common.nats_access import SCHEDULE_OUTCOMES
from kiln_common.schedules import ACTIVE, BUILT, FAILED, RUNNING, Schedule, ScheduleRun

log = logging.getLogger(__name__)

ENDS = ("build.succeeded", "build.failed", "build.cancelled")


class Outcomes:
    def __init__(self, core: ScheduleCore, builder: BuilderCore, ack_wait: float = 60.0) -> None:
        self.core = core
        self.store = core.store
        self.builder = builder
        self.ack_wait = ack_wait

    async def ensure(self) -> None:
        config = ConsumerConfig(
            durable_name=SCHEDULE_OUTCOMES, filter_subjects=[subject_for(e) for e in ENDS],
            ack_policy=AckPolicy.EXPLICIT, ack_wait=self.ack_wait,
            deliver_policy=DeliverPolicy.NEW, max_ack_pending=64,
        )  # fmt: skip
        await self.core.js.add_consumer(STREAM, config)

    async def run(self) -> None:
        await jetstream.consume(self.core.js, STREAM, SCHEDULE_OUTCOMES, self.ensure, self.take,
                                "scheduled builds' outcomes")  # fmt: skip

    async def take(self, msg: Msg) -> None:
        try:
            build = await self.builder.records.get(from_json(msg.data).subject)
            if build.schedule_id:
                await self.settle(build)
        except NotFound:
            pass  # no such build: nothing to settle
        except Exception as exc:
            if isinstance(jetstream.translate(exc) or exc, Unavailable):
                log.warning("a scheduled build's end put off: %s", exc)
                return  # comes back
            log.exception("a scheduled build's end was not settled")
        await msg.ack()

    async def settle(self, build: Build) -> None:
        if build.state not in lifecycle.TERMINAL:
            return
        if build.state != BuildState.SUCCEEDED:
            error = build.error.message if build.error else ""
            why = f"build {build.id} {lifecycle.word(build.state)}" + (
                f": {error}" if error else ""
            )
            await self.failed(build.schedule_id, build.schedule_run, why, build.id)
            return
        # As the worker read the inputs: what the next run compares with.
        digest = build.fingerprint.digest if build.fingerprint is not None else ""

        def built(run: ScheduleRun) -> bool:
            if run.outcome != RUNNING:
                return False  # settled before (an event taken twice)
            run.outcome, run.build_id, run.fingerprint = BUILT, build.id, digest
            return True

        try:
            _, changed = await self.store.settle_run(build.schedule_id, build.schedule_run, built)
        except NotFound:
            return  # the schedule was deleted
        if not changed:
            return

        def succeeded(s: Schedule) -> bool:
            s.last_build, s.last_fingerprint, s.failures = build.id, digest, 0
            return True

        await self.store.mutate(build.schedule_id, succeeded)

    async def failed(self, schedule_id: str, number: int, why: str, build_id: str = "") -> None:
        """The run failed: counted once (the move out of running), and the
        schedule paused at its limit."""

        def failed(run: ScheduleRun) -> bool:
            if run.outcome != RUNNING:
                return False
            run.outcome, run.error = FAILED, why
            run.build_id = build_id or run.build_id
            return True

        try:
            _, changed = await self.store.settle_run(schedule_id, number, failed)
        except NotFound:
            return
        if not changed:
            return

        def counted(s: Schedule) -> bool:
            s.failures += 1
            return True

        schedule, _ = await self.store.mutate(schedule_id, counted)
        log.warning("schedule %s run %d failed (%d in a row): %s",
                    schedule_id, number, schedule.failures, why)  # fmt: skip
        if schedule.state == ACTIVE and schedule.failures >= schedule.pause_after:
            reason = f"{schedule.failures} runs in a row failed; the last: {why}"
            await self.core.stop(schedule_id, reason)
