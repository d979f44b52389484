"""A builder worker: takes builds from the queue, runs the engine, stores
the outputs, and records the outcome.

A build's message is acked only once the build has ended. While it runs the
worker heartbeats (in_progress), so a slow build is not redelivered but a
dead worker's is. A new attempt first removes what earlier attempts stored,
and an attempt that finds it was overtaken removes its own: a build never
ends with two sets of artifacts."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import shutil
from collections.abc import Callable
from pathlib import Path

from nats.aio.msg import Msg

from kiln_builder import fingerprint
from kiln_builder.engine import Bake, BakeOptions, BakeResult, StepRecord
from kiln_builder.outputs import OutputFile
from kiln_builder.resources import claim
from kiln_builder.service import inputs, queue, results
from kiln_builder.service.artifacts import BuildArtifacts, Upload, base_labels
from kiln_builder.service.core import BuilderCore, event_data
from kiln_builder.service.ending import Ending
from kiln_builder.service.job import Job
from kiln_builder.service.queue import Delivery
from kiln_builder.service.reporter import BuildReporter
from kiln_builder.service.results import cached_artifacts
from kiln_builder.service.schedule import Scheduler
from kiln_builder.service.settings import BuilderSettings
from kiln_builder.storage import StorageAccess
from kiln_client.credentials import acting_for
from kiln_common import jetstream, lifecycle
from kiln_common.artifacts import VERSION_LABEL
from kiln_common.auth.quotas import Quotas
from kiln_common.builds import (
    Build,
    BuildArtifact,
    BuildError,
    BuildState,
    Fingerprint,
)
from kiln_common.errors import KilnError
from kiln_common.lifecycle import STATES, TERMINAL, Outcome
from kiln_common.logs import redact
from kiln_common.proc import ProcessError
from kiln_recipe import bundle
from kiln_recipe.schema import Recipe

log = logging.getLogger(__name__)

FETCH_SECONDS = 2.0


class Worker:
    def __init__(self, core: BuilderCore, settings: BuilderSettings) -> None:
        self.core = core
        self.nats = core.nats
        self.settings = settings
        self.name = settings.name()
        self.ending = Ending(core, settings, self.name)
        self._storage = StorageAccess(settings.storage, settings.storage_retry_seconds)
        self.jobs: dict[str, Job] = {}
        assert core.index is not None, "a worker schedules from the build index"
        self.scheduler = Scheduler(
            core.nats.nc, core.nats.js, core.index, Quotas(settings.quotas), core.nats.policy
        )
        self._stopping = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()

    # ---- the loop --------------------------------------------------------------------

    async def run(self) -> None:
        nc = self.nats.nc
        cancels = await nc.subscribe(queue.CANCEL_PREFIX + "*", cb=self._on_cancel)
        exhausted = await nc.subscribe(
            queue.MAX_DELIVERIES_ADVISORY, queue=queue.ADVISORY_GROUP, cb=self._on_exhausted
        )
        slots = asyncio.Semaphore(self.settings.concurrency)
        log.info("worker %s takes up to %d builds at once", self.name, self.settings.concurrency)
        try:
            while not self._stopping.is_set():
                await slots.acquire()
                # shutdown() frees slots as it stops jobs: a message taken now (the
                # one just handed back, say) would sit unacked in a worker on its
                # way out until ack_wait, instead of going to one that stays.
                if self._stopping.is_set():
                    slots.release()
                    break
                try:
                    delivery = await self.scheduler.next()
                except Exception as exc:  # noqa: BLE001 - NATS away: wait for it, keep the loop
                    slots.release()
                    log.warning("cannot take builds now: %s", jetstream.translate(exc) or exc)
                    await asyncio.sleep(FETCH_SECONDS)
                    continue
                if delivery is None:
                    slots.release()
                    await self.scheduler.idle()
                    continue
                if self._stopping.is_set():  # taken while shutdown began: give it back
                    self.scheduler.finished(delivery.build_id)
                    slots.release()
                    await self._give_back(delivery)
                    break
                task = asyncio.create_task(self._take(delivery))
                self._tasks.add(task)
                task.add_done_callback(self._done(slots, delivery.build_id))
        finally:
            for sub_ in (cancels, exhausted):
                with contextlib.suppress(Exception):
                    await sub_.unsubscribe()

    async def _give_back(self, delivery: Delivery) -> None:
        """Hands an untouched delivery back at once (it counts as a delivery). If
        NATS is away the message comes back after ack_wait anyway: only log it."""
        try:
            await delivery.nak(0)
        except Exception as exc:  # noqa: BLE001 - shutting down: nothing else to do with it
            log.warning("build %s not handed back: %s", delivery.build_id, exc)

    def _done(
        self, slots: asyncio.Semaphore, build_id: str
    ) -> Callable[[asyncio.Task[None]], None]:
        def done(task: asyncio.Task[None]) -> None:
            self._tasks.discard(task)
            self.scheduler.finished(build_id)
            slots.release()

        return done

    async def shutdown(self) -> None:
        """Stops taking builds; running ones are stopped and handed back to
        the queue for another worker (their records say queued again)."""
        self._stopping.set()
        for job in list(self.jobs.values()):
            self._stop(job, "shutdown")
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    def _stop(self, job: Job, why: str) -> None:
        if job.why_stopped:
            return
        job.why_stopped = why
        if job.artifacts is not None:
            job.artifacts.stop.set()
        if job.task is not None:
            job.task.cancel()

    async def _on_cancel(self, msg: Msg) -> None:
        job = self.jobs.get(msg.subject.removeprefix(queue.CANCEL_PREFIX))
        if job is not None:
            log.info("build %s: cancel requested", job.build_id)
            self._stop(job, "cancel")

    async def _on_exhausted(self, msg: Msg) -> None:
        """The server gave up on a message (max_deliver): fail its build,
        with the last attempt's error if it recorded one."""
        try:
            seq = int(json.loads(msg.data)["stream_seq"])
            stored = await self.nats.js.get_msg(queue.STREAM, seq)
            build_id = (stored.data or b"").decode()
            last = await self.core.get(build_id)
            error = BuildError(message=f"the build was delivered {self.settings.max_deliver} "
                                  "times without ending")  # fmt: skip
            if last.error is not None:
                error = dataclasses.replace(last.error)
                error.message = f"{error.message} (after {last.attempt} attempts)"
            await self.ending.finish(build_id, Outcome(BuildState.FAILED, error))
            await self.nats.js.delete_msg(queue.STREAM, seq)
        except Exception:
            log.warning("max-deliveries advisory not handled", exc_info=True)

    # ---- one message -----------------------------------------------------------------

    async def _take(self, msg: Delivery) -> None:
        build_id, attempt = msg.build_id, msg.attempt
        try:
            build = await self.core.get(build_id)
        except KilnError:
            log.error("queue message %r names no build: dropped", build_id)
            await msg.term()
            return
        if build.state in TERMINAL:
            await msg.ack()  # cancelled while queued, or finished by a worker presumed dead
            return
        if build.cancel_requested:
            await self.ending.finish(build_id, Outcome(BuildState.CANCELLED))
            await msg.ack()
            return
        if not await self.scheduler.admit(msg, build):
            return  # its tenant is at its quota: back in its queue
        if build_id in self.jobs:
            # Delivered again while this worker runs it (a heartbeat was late):
            # keep running it, acking the newest delivery.
            self.jobs[build_id].msg = msg
            return
        job = Job(build_id, attempt, msg)
        self.jobs[build_id] = job
        heartbeat = asyncio.create_task(self._heartbeat(job))
        try:
            # Its layers, base and outputs are the build's tenant's: every call
            # to storage and the publisher from here on acts for that tenant.
            with acting_for(build.tenant):
                await self._attempt(job)
        except Exception as exc:  # noqa: BLE001 - NATS away at the start or the end
            # Left unacked: the message comes back after ack_wait, to any worker.
            log.warning("build %s: attempt %d interrupted: %s", build_id, attempt,
                        jetstream.translate(exc) or exc)  # fmt: skip
        finally:
            heartbeat.cancel()
            self.jobs.pop(build_id, None)

    async def _heartbeat(self, job: Job) -> None:
        every = max(0.5, self.settings.ack_wait_seconds / 4)
        while True:
            await asyncio.sleep(every)
            with contextlib.suppress(Exception):
                await job.msg.in_progress()
            # A cancel sent while this worker was not listening is in the record.
            with contextlib.suppress(Exception):
                if (await self.core.get(job.build_id)).cancel_requested:
                    self._stop(job, "cancel")

    async def _attempt(self, job: Job) -> None:
        workspace = self.settings.work_root / f"{job.build_id}-{job.attempt}"
        claim(workspace)  # the janitor of another worker leaves it alone
        try:
            build = await self._start(job)
            if build is None:  # ended, or a cancel came first: end it as cancelled
                await self.ending.finish(job.build_id, Outcome(BuildState.CANCELLED))
                await job.msg.ack()
                return
            log_file = workspace / f"{build.name}-{build.version}.build.log"
            job.reporter = BuildReporter(self.nats, self.core.events, build, log_file)
            job.artifacts = BuildArtifacts(self._storage, job.build_id, job.attempt)
            job.task = asyncio.create_task(self._build(job, build, workspace))
            if job.why_stopped:  # asked to stop before the task existed
                job.task.cancel()
            await self.ending.conclude(job, *await self._outcome(job))
        finally:
            await asyncio.to_thread(shutil.rmtree, workspace, ignore_errors=True)

    async def _outcome(self, job: Job) -> tuple[BuildState, BuildError | None, list[BuildArtifact]]:
        """Waits for the build task; its end as (state, error, artifacts)."""
        assert job.task is not None
        try:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.shield(job.task)
            if job.task.cancelled() or job.why_stopped:
                return BuildState.CANCELLED, None, []
            return BuildState.SUCCEEDED, None, job.task.result()
        except Exception as exc:  # noqa: BLE001 - every failure is recorded
            if job.why_stopped:  # e.g. the aborted upload of a stopped build
                return BuildState.CANCELLED, None, []
            return BuildState.FAILED, self._error(job, exc), []

    def _error(self, job: Job, exc: BaseException) -> BuildError:
        running = job.reporter.running() if job.reporter else []
        message = redact(  # kept in the record: no credential of a URL in it
            str(exc)
            if isinstance(exc, (KilnError, ProcessError, OSError))
            else (f"internal error: {type(exc).__name__}: {exc}")
        )
        tail = list(job.reporter.tail) if job.reporter else []
        if job.reporter:
            job.reporter.log(f"build failed: {message}", "ERROR")
        return BuildError(step=running[-1] if running else "", message=message, log_tail=tail)

    async def _start(self, job: Job) -> Build | None:
        """Takes the build; None if it ended or was cancelled meanwhile."""
        build, changed = await self.core.records.mutate(
            job.build_id, lambda b: lifecycle.start(b, self.name, job.attempt)
        )
        if not changed:
            return None
        await self.core.announce(build)
        await self.core.events.publish(
            STATES[build.state].event,
            build.id,
            event_data(build, worker=self.name, attempt=job.attempt),
        )
        log.info("build %s: attempt %d on %s", job.build_id, job.attempt, self.name)
        return build

    # ---- the build itself ------------------------------------------------------------

    async def _build(self, job: Job, build: Build, workspace: Path) -> list[BuildArtifact]:
        assert job.reporter is not None and job.artifacts is not None
        reporter = job.reporter
        with reporter.current():
            source = await self.core.recipe_of(job.build_id)
            recipe = bundle.load(source, _fresh(workspace / "recipe"))
            if job.attempt > 1:
                removed = await job.artifacts.remove(other_attempts_only=True)
                log.info(
                    "attempt %d: removed %d artifacts of earlier attempts", job.attempt, removed
                )
            boot_test = self.settings.boot_test and not build.skip_boot_test
            recipe = await self._based(job, recipe, build)
            found = await self._fingerprint(job, recipe, build, boot_test)
            if job.cached is not None:
                await self._numbered(job, job.cached.build_number, job.cached.image_version)
                return cached_artifacts(job.cached)
            options = BakeOptions(
                out_dir=workspace / "out",
                work_root=workspace,
                cache_dir=self.settings.cache_dir,
                build_id=f"{job.build_id}-{job.attempt}",
                storage=self._storage,
                publisher=self.settings.publisher or None,
                no_cache=build.no_cache,
                cache_max_bytes=int(self.settings.cache_max_gib * 1024**3),
                boot_test=boot_test,
                fix_kvm_device=self.settings.fix_kvm_device,
                sandbox=self.settings.sandbox_policy(),
                default_mirror=self.settings.default_mirror,
                egress=self.settings.egress_policy(),
                apt_state=fingerprint.apt_state(found),
                base_digest=fingerprint.base_part(found),
                **self.settings.isolation_options(),
            )
            bake = Bake(recipe, options, reporter.step)
            job.bake = bake
            reporter.plan = [*bake.plan(), "upload"]
            job.steps = bake.steps
            result = await bake.run()
            return await self._upload(job, build, result)

    async def _based(self, job: Job, recipe: Recipe, build: Build) -> Recipe:
        """The recipe with a channel base made the build it points at now, and
        the chain of builds under its base recorded as the build's ancestry."""
        based = await inputs.resolve_base(recipe, build.tenant, self.core.channels, self._storage)
        if based.ancestry:
            assert job.reporter is not None
            job.reporter.log("base: built by " + " <- ".join(based.ancestry))

            def record(b: Build) -> bool:
                if not lifecycle.held_by(b, self.name, job.attempt):
                    return False
                b.ancestry = list(based.ancestry)
                return True

            await self.core.records.mutate(job.build_id, record)
        return based.recipe

    async def _numbered(self, job: Job, number: int, version: str) -> None:
        """Records the build's number and image version, and labels its artifacts with it."""
        assert job.artifacts is not None

        def record(b: Build) -> bool:
            if not lifecycle.held_by(b, self.name, job.attempt):
                return False
            b.build_number, b.image_version = number, version
            return True

        await self.core.records.mutate(job.build_id, record)
        job.artifacts.labels[VERSION_LABEL] = version

    async def _number(self, job: Job, build: Build) -> None:
        """A build that made its image gets the name's next number (an earlier
        attempt's, if one got one) before its artifacts are stored."""
        if self.core.channels is None:
            return
        if build.build_number:  # the record this attempt started from keeps an earlier one's
            number, version = build.build_number, build.image_version
        else:
            number, version = await self.core.channels.number(build)
        await self._numbered(job, number, version)
        assert job.reporter is not None
        job.reporter.log(f"version {version} (build {number} of {build.name})")

    async def _fingerprint(
        self, job: Job, recipe: Recipe, build: Build, boot_test: bool
    ) -> Fingerprint:
        """Reads the build's inputs (service.inputs), records them, and finds
        the result cache's build for them unless the build asked for none."""
        found = await inputs.read(self.settings, self._storage, recipe, build.recipe_digest)
        assert job.reporter is not None
        job.reporter.log(f"fingerprint {found.digest}: " +
                         ", ".join(f"{p.name} {p.value}" for p in found.parts))  # fmt: skip
        await self.core.records.mutate(
            job.build_id, lambda b: lifecycle.fingerprinted(b, self.name, job.attempt, found)
        )
        # What the build was asked for besides its inputs: a tested result only
        # answers for a tested build.
        job.inputs = f"{found.digest} boot-test={boot_test}"
        if not build.no_cache:
            job.cached = await results.find(self.core.records, self._storage, build, job.inputs)
        if job.cached is not None:
            job.reporter.log(f"result cache: build {job.cached.id} had these inputs; its "
                             "artifacts are this build's (--no-cache builds anew)")  # fmt: skip
        return found

    async def _upload(self, job: Job, build: Build, result: BakeResult) -> list[BuildArtifact]:
        assert job.reporter is not None and job.artifacts is not None
        if result.base is not None:
            job.artifacts.labels.update(base_labels(result.base))
        await self._number(job, build)
        files = [Upload(o.path, "image", _spec(o)) for o in result.outputs]
        files.append(Upload(result.sbom, "sbom", "spdx.json"))
        if result.checks is not None and result.checks.path is not None:
            files.append(Upload(result.checks.path, "checks", "checks.json"))
        if result.console_log is not None and result.console_log.is_file():
            files.append(Upload(result.console_log, "console-log", "console.log"))
        if result.tests is not None:
            files.append(Upload(result.tests, "tests", "tests.json"))
        record = StepRecord("upload")
        job.steps.append(record)
        job.reporter.step(record, "start")
        total = sum(f.path.stat().st_size for f in files) or 1
        sent = 0

        def progress(n: int) -> None:
            nonlocal sent
            sent += n
            job.reporter.progress("upload", sent / total, f"{sent >> 20} of {total >> 20} MiB")  # type: ignore[union-attr]

        started = asyncio.get_running_loop().time()
        try:
            stored = [
                await job.artifacts.upload(f, build.name, build.version, progress) for f in files
            ]
        finally:  # a failed upload took its time too
            record.seconds = round(asyncio.get_running_loop().time() - started, 2)
        job.reporter.step(record, "done")
        if result.boot is not None:
            job.accel = result.boot.accel.kind
            job.reporter.log(
                f"boot test: login prompt after {result.boot.seconds:.0f}s "
                f"under {result.boot.accel.kind}"
            )
        for index, test in enumerate(job.bake.test_commands if job.bake else [], 1):
            job.reporter.log(f"test command {index} `{test.command}`: exit {test.exit_status} "
                             f"in {test.seconds:.1f}s")  # fmt: skip
        return stored


def _spec(output: OutputFile) -> str:
    """The recipe's name of an output: qcow2, raw.xz, tar.zst."""
    return output.format + (f".{output.compression}" if output.compression else "")


def _fresh(path: Path) -> Path:
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path
