"""What one running build tells the world: its log (a file kept as an
artifact, the last lines for the error, batched LogLine updates), its steps
(in the record and as updates and build.step events) and progress.

Log lines come from the standard logging of the engine and of every process
it runs: a handler sends the lines of whichever build the logging code runs
for (a context variable, which asyncio tasks and threads inherit)."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from kiln_builder.engine import StepRecord
from kiln_builder.service import updates
from kiln_builder.service.core import Nats, event_data
from kiln_common.builds import Build, BuildUpdate, LogLine, Progress, Step, StepState, StepUpdate
from kiln_common.events import Publisher
from kiln_common.lifecycle import STEP_EVENT, now
from kiln_common.logs import redact
from kiln_common.proc import OUTPUT_LOG

log = logging.getLogger(__name__)

TAIL_LINES = 40
BATCH_SECONDS = 0.25  # log lines are sent in batches at most this old
MAX_BATCH = 200

CURRENT: contextvars.ContextVar[BuildReporter | None] = contextvars.ContextVar(
    "kiln_build_reporter", default=None
)


class _Handler(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        reporter = CURRENT.get()
        if reporter is None:
            return
        try:
            text = record.getMessage() if record.name == OUTPUT_LOG.name else self.format(record)
            text = redact(text)  # the build log is kept and shown: no signed URL in it
            level = "OUTPUT" if record.name == OUTPUT_LOG.name else record.levelname
            reporter.log(text, level)
        except Exception:  # noqa: BLE001 - a log line must never break a build
            self.handleError(record)


_HANDLER = _Handler(logging.INFO)
_HANDLER.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))


def install_log_capture() -> None:
    """Once per process: engine logs and process output reach the running build."""
    for logger in (logging.getLogger(), OUTPUT_LOG):
        if _HANDLER not in logger.handlers:
            logger.addHandler(_HANDLER)
    OUTPUT_LOG.setLevel(logging.INFO)


@dataclass
class _Item:
    update: BuildUpdate
    step: StepRecord | None = None
    what: str = ""


class BuildReporter:
    def __init__(self, nats: Nats, events: Publisher, build: Build, log_path: Path) -> None:
        self.nats = nats
        self.events = events
        self.build_id = build.id
        self.build = build
        self.log_path = log_path
        self.tail: deque[str] = deque(maxlen=TAIL_LINES)
        self.plan: list[str] = []
        self.states: dict[str, int] = {}  # each step's last state
        self._file: TextIO = open(log_path, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()
        self._loop = asyncio.get_running_loop()
        self._queue: asyncio.Queue[_Item | None] = asyncio.Queue()
        self._held: list[_Item | None] = []
        self._pump = asyncio.create_task(self._run())

    # ---- called from the build (any thread) ------------------------------------------

    def log(self, text: str, level: str = "INFO") -> None:
        for line in text.splitlines() or [""]:
            self._file.write(line + "\n")
            self.tail.append(line)
        self._put(_Item(self._update(log=LogLine(text=text, level=level))))

    def step(self, record: StepRecord, what: str) -> None:
        """The engine's progress callback: what is "start" or "done"."""
        state = StepState.RUNNING if what == "start" else StepState.DONE
        self._step(record, state)

    def end_step(self, record: StepRecord, state: StepState) -> None:
        self._step(record, state)

    def progress(self, step: str, fraction: float, detail: str = "") -> None:
        progress = Progress(step=step, fraction=max(0.0, min(1.0, fraction)), detail=detail)
        self._put(_Item(self._update(progress=progress)))

    def running(self) -> list[str]:
        return [name for name, state in self.states.items() if state == StepState.RUNNING]

    def _step(self, record: StepRecord, state: StepState) -> None:
        self.states[record.name] = state
        index = self.plan.index(record.name) + 1 if record.name in self.plan else 0
        step = StepUpdate(
            name=record.name,
            state=state,
            cached=record.cached,
            seconds=record.seconds,
            index=index,
            total=len(self.plan),
        )
        self._put(_Item(self._update(step=step), record, StepState(state).name.lower()))

    def _update(self, **kind: object) -> BuildUpdate:
        return BuildUpdate(build_id=self.build_id, time=now(), **kind)  # type: ignore[arg-type]

    def _put(self, item: _Item | None) -> None:
        # Logging may happen on a worker thread: hand over through the loop.
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self._loop:
            self._queue.put_nowait(item)
        else:
            self._loop.call_soon_threadsafe(self._queue.put_nowait, item)

    @contextlib.contextmanager
    def current(self) -> Iterator[None]:
        token = CURRENT.set(self)
        try:
            yield
        finally:
            CURRENT.reset(token)

    # ---- the pump --------------------------------------------------------------------

    async def _run(self) -> None:
        while True:
            item = self._held.pop() if self._held else await self._queue.get()
            if item is None:
                return
            try:
                if item.update.kind == "log":
                    await self._send_logs(item)
                else:
                    await self._send(item)
            except Exception:
                log.exception("build %s: an update was not sent", self.build_id)

    async def _send_logs(self, first: _Item) -> None:
        """One update for the lines that came within BATCH_SECONDS; whatever
        came after them that is not a line waits its turn in _held."""
        assert first.update.log is not None
        lines = [first.update.log.text]
        deadline = self._loop.time() + BATCH_SECONDS
        while len(lines) < MAX_BATCH:
            try:
                item = self._queue.get_nowait()
            except asyncio.QueueEmpty:
                if self._loop.time() >= deadline:
                    break
                await asyncio.sleep(0.05)
                continue
            if item is None or item.update.log is None:
                self._held.append(item)
                break
            lines.append(item.update.log.text)
        first.update.log.text = "\n".join(lines)
        await updates.publish(self.nats.js, first.update)

    async def _send(self, item: _Item) -> None:
        if item.step is not None and item.update.step is not None:
            await self._record_step(item.step, item.update.step.state)
            await self.events.publish(
                STEP_EVENT,
                self.build_id,
                event_data(
                    self.build,
                    step=item.step.name,
                    step_state=item.what,
                    cached=item.step.cached,
                    seconds=item.step.seconds,
                ),
            )
        await updates.publish(self.nats.js, item.update)

    async def _record_step(self, record: StepRecord, state: StepState) -> None:
        def change(build: Build) -> bool:
            step = next((s for s in build.steps if s.name == record.name), None)
            if step is None:
                step = Step(name=record.name)
                build.steps.append(step)
            step.state = state
            step.cached = record.cached
            step.key = record.key
            step.seconds = record.seconds
            if state == StepState.RUNNING:
                step.started = now()
            else:
                step.finished = now()
            return True

        self.build, _ = await self.nats.records.mutate(self.build_id, change)

    async def close(self) -> None:
        """Sends what is queued, then stops; the log file is complete after."""
        self._put(None)
        with contextlib.suppress(Exception):
            await self._pump
        self._file.close()
