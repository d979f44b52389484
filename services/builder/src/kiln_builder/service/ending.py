"""How an attempt ends: recorded as its outcome (once, by whichever pod ends
the build: every transition is a compare-and-set), handed back to the queue
(shutting down, or a failure worth another try), or dropped when another
worker overtook it; what a failed or stopped attempt stored is removed."""

from __future__ import annotations

import logging
from typing import Any

from kiln_builder.service import outcome
from kiln_builder.service.artifacts import Upload
from kiln_builder.service.core import BuilderCore, event_data
from kiln_builder.service.job import Job
from kiln_builder.service.settings import BuilderSettings
from kiln_common import jetstream, lifecycle
from kiln_common.builds import BuildArtifact, BuildError, BuildState, StepState
from kiln_common.errors import Unavailable
from kiln_common.lifecycle import STATES, Outcome
from kiln_recipe import RecipeError

log = logging.getLogger(__name__)


class Ending:
    def __init__(self, core: BuilderCore, settings: BuilderSettings, name: str) -> None:
        self.core = core
        self.settings = settings
        self.name = name

    async def conclude(
        self,
        job: Job,
        state: BuildState,
        error: BuildError | None,
        stored: list[BuildArtifact],
    ) -> None:
        assert job.reporter is not None and job.artifacts is not None
        if not await self.still_mine(job):
            await job.reporter.close()
            removed = await job.artifacts.remove(attempt_only=True)
            log.warning(
                "build %s: overtaken by another worker; removed %d artifacts of attempt %d",
                job.build_id,
                removed,
                job.attempt,
            )
            return
        if state != BuildState.SUCCEEDED:
            job.artifacts.stop.clear()  # the log is still stored
            await self.remove_partial(job)
            self.mark_steps(job, state)
        if job.why_stopped == "shutdown":
            await self.requeue(job)
            return
        await job.reporter.close()
        log_artifact = await self.store_log(job)
        retry = state == BuildState.FAILED and self.retryable(job, error)
        if retry:
            await self.requeue(job, error)
            return
        if job.cached is not None and state == BuildState.SUCCEEDED:
            ended = outcome.of_cached(job.cached, stored, log_artifact)
        else:
            ended = outcome.of_attempt(state, error, stored, log_artifact, job.accel, job.bake)
        await self.finish(job.build_id, ended)
        if state == BuildState.SUCCEEDED and job.cached is None:
            if job.inputs:
                await self.remember(job)
            await self.follow(job)
        await job.msg.ack() if state != BuildState.FAILED else await job.msg.term()

    async def remember(self, job: Job) -> None:
        """The result cache's answer for this build's inputs from now on; a
        failure to record it costs a later build its shortcut, nothing else."""
        assert job.reporter is not None
        try:
            await self.core.records.remember(job.reporter.build.tenant, job.inputs, job.build_id)
        except Exception as exc:  # noqa: BLE001 - the build has succeeded all the same
            log.warning("build %s: result not recorded for the cache: %s", job.build_id, exc)

    async def follow(self, job: Job) -> None:
        """`latest` moves to the new build; a failure to move it leaves the
        build succeeded all the same (latest moves on with the next one)."""
        if self.core.channels is None:
            return
        try:
            await self.core.channels.follow(await self.core.records.get(job.build_id))
        except Exception as exc:  # noqa: BLE001 - the build has succeeded all the same
            log.warning("build %s: latest not moved: %s", job.build_id, exc)

    async def remove_partial(self, job: Job) -> None:
        """Removes what this failed or stopped attempt stored. Storage may be
        the very thing that failed: the outcome is recorded all the same (a
        next attempt removes what this one left)."""
        assert job.artifacts is not None
        try:
            await job.artifacts.remove(attempt_only=True)
        except Exception as exc:  # noqa: BLE001 - the outcome matters more than the cleanup
            log.warning("build %s: outputs of attempt %d not removed: %s",
                        job.build_id, job.attempt, exc)  # fmt: skip

    def mark_steps(self, job: Job, state: BuildState) -> None:
        assert job.reporter is not None
        end = StepState.CANCELLED if state == BuildState.CANCELLED else StepState.FAILED
        running = job.reporter.running()
        for step in job.steps:
            if step.name in running:
                job.reporter.end_step(step, end)

    def retryable(self, job: Job, error: BuildError | None) -> bool:
        """Storage or NATS away (Unavailable), or the disk full: worth another
        try, as long as deliveries are left."""
        exc = job.task.exception() if job.task and not job.task.cancelled() else None
        if exc is not None:
            exc = jetstream.translate(exc) or exc
        passing = isinstance(exc, (Unavailable, OSError)) and not isinstance(exc, RecipeError)
        return passing and job.attempt < self.settings.max_deliver

    async def requeue(self, job: Job, error: BuildError | None = None) -> None:
        assert job.reporter is not None
        await job.reporter.close()

        build, changed = await self.core.records.mutate(
            job.build_id, lambda b: lifecycle.requeue(b, self.name, job.attempt, error)
        )
        if changed:
            await self.core.announce(build)
        delays = self.settings.retry_backoff_seconds or [0.0]
        delay = 0.0 if error is None else delays[min(job.attempt, len(delays)) - 1]
        await job.msg.nak(delay=delay)
        log.warning("build %s: handed back to the queue (retry in %.0fs)", job.build_id, delay)

    async def still_mine(self, job: Job) -> bool:
        return lifecycle.held_by(await self.core.get(job.build_id), self.name, job.attempt)

    async def store_log(self, job: Job) -> BuildArtifact | None:
        assert job.reporter is not None and job.artifacts is not None
        path = job.reporter.log_path
        if not path.is_file() or path.stat().st_size == 0:
            return None
        try:
            return await job.artifacts.upload(
                Upload(path, "build-log", "build.log"),
                job.reporter.build.name,
                job.reporter.build.version,
                lambda n: None,
            )
        except Exception:
            log.exception("build %s: the log was not stored", job.build_id)
            return None

    async def finish(self, build_id: str, outcome: Outcome) -> None:
        """Ends the build, and announces it only if this call ended it: with
        several pods (or an advisory racing a worker) exactly one does."""
        build, changed = await self.core.records.mutate(
            build_id, lambda b: lifecycle.finish(b, outcome)
        )
        if not changed:
            return
        await self.core.announce(build)
        extra: dict[str, Any] = {"artifacts": [a.artifact_id for a in build.artifacts]}
        if outcome.error is not None:
            extra.update(step=outcome.error.step, error=outcome.error.message)
        if build.fingerprint is not None:
            extra["fingerprint"] = build.fingerprint.digest
        if build.cached_from:
            extra["cached_from"] = build.cached_from
        info = STATES[build.state]
        await self.core.events.publish(info.event, build.id, event_data(build, **extra))
        log.info("build %s %s", build_id, info.word)
