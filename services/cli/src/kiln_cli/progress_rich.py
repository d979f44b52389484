"""The terminal display (kiln_cli.progress chooses it when stderr is a
terminal): rich's live bars on stderr, each line fitted to the terminal's
width, redrawn in place. Every live display is a context manager, so it is
stopped (the cursor shown again, the redrawn lines settled) on any exit:
the end, an error, Ctrl-C."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Protocol, TextIO

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    ProgressColumn,
    Task,
    TaskID,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Column
from rich.text import Text

from kiln_cli.progress import BuildView, state_line, step_line, where
from kiln_client import transfer
from kiln_common import humane
from kiln_common.builds import BuildUpdate, StepState, StepUpdate

TAIL = 4  # log lines under the bar of a followed build
REFRESH = 8  # redraws a second


class Drawn(Protocol):
    """A rich Live, or a Progress (which draws through one)."""

    def start(self) -> None: ...
    def stop(self) -> None: ...


@contextmanager
def running(drawn: Drawn) -> Iterator[None]:
    """Draws while the with block runs. Unlike `with live:`, start() is
    inside the try: a Ctrl-C that lands while it starts (after the first
    frame, before the redraw thread) still stops it, or the redraw thread
    would go on drawing over the error with the cursor hidden."""
    try:
        drawn.start()
        yield
    except BaseException:
        # After a start() that failed part-way, stop() may fail too (rich pops a
        # render hook it never pushed): the error that stopped us is the one to show.
        with contextlib.suppress(Exception):
            drawn.stop()
        raise
    drawn.stop()


class KilnConsole(Console):
    def on_broken_pipe(self) -> None:
        # rich's own answer is exit 1; the command's is exits.BROKEN_PIPE
        # (main()). Nothing more is written to the closed stream meanwhile.
        self.quiet = True
        raise BrokenPipeError


class RateColumn(ProgressColumn):
    """Bytes a second, in binary units like the sizes beside it: rich's
    estimate over its recent samples, or, until it has two (a push reports
    whole parts), the average since the start."""

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        moved = task.completed - task.fields.get("resumed", 0)
        if speed is None and task.elapsed and moved > 0:
            speed = moved / task.elapsed
        text = "?" if speed is None else f"{humane.size(speed)}/s"
        return Text(text, style="progress.data.speed")


class WordsColumn(TextColumn):
    """Text (a file's or a step's name, a step's detail) that yields: at most
    a share of the terminal's width, cut with an ellipsis, so the bar and the
    numbers beside it keep their room on a narrow terminal."""

    def __init__(self, text_format: str, console: Console, share: float) -> None:
        super().__init__(text_format)
        self.console, self.share = console, share

    def get_table_column(self) -> Column:
        # Asked at each redraw, so a resized terminal is followed.
        widest = max(8, int(self.console.width * self.share))
        return Column(no_wrap=True, overflow="ellipsis", max_width=widest)


def _log_line(text: str) -> Text:
    """A build's log line under the bar: a tool's colours kept, its other
    escape codes (cursor moves, clearing the screen) dropped, so it cannot
    break the redrawn block; cut to the width."""
    return Text.from_ansi(f"  | {text}", no_wrap=True, overflow="ellipsis", style="dim")


class Rich:
    def __init__(
        self,
        out: TextIO,
        console: Console | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.console = console or KilnConsole(file=out)
        self.clock = clock

    def note(self, text: str) -> None:
        self.console.print(Text(text), soft_wrap=True)  # the terminal wraps it: copied whole

    @contextmanager
    def transfer(self, what: str, total: int) -> Iterator[transfer.Progress | None]:
        bars = Progress(
            WordsColumn("{task.description}", self.console, 0.3),
            BarColumn(bar_width=None),
            DownloadColumn(binary_units=True, table_column=Column(no_wrap=True)),
            RateColumn(table_column=Column(no_wrap=True)),
            TimeRemainingColumn(elapsed_when_finished=True, table_column=Column(no_wrap=True)),
            console=self.console,
            get_time=self.clock,
            refresh_per_second=REFRESH,
            redirect_stdout=False,  # stdout is for the result alone
        )
        task = bars.add_task(what, total=total)
        first = [True]

        def moved(n: int) -> None:
            if first[0]:  # what an earlier, interrupted run already moved
                first[0] = False
                bars.update(task, advance=n, resumed=n)
            else:
                bars.advance(task, n)

        with running(bars):
            yield moved

    @contextmanager
    def build(self) -> Iterator[BuildView]:
        view = RichBuild(self.console, self.clock)
        with running(view.live):
            yield view


class RichBuild:
    """Finished steps and state changes as lines that stay; under them, redrawn
    in place, the running step's bar (its fraction, or a pulse until it has
    one) and the last TAIL lines of the log, each cut to the terminal's width."""

    def __init__(self, console: Console, clock: Callable[[], float]) -> None:
        self.console = console
        self.tail: list[str] = []
        self.bar = Progress(
            WordsColumn("{task.description}", console, 0.3),
            BarColumn(bar_width=None),
            TaskProgressColumn(),
            TimeElapsedColumn(),
            WordsColumn("{task.fields[detail]}", console, 0.3),
            console=console,
            get_time=clock,
            auto_refresh=False,  # drawn by the Live below, never on its own
        )
        self.step: TaskID | None = None
        self.live = Live(
            console=console,
            get_renderable=self.render,
            refresh_per_second=REFRESH,
            transient=True,  # the bar and tail go; the lines above stay
            redirect_stdout=False,
        )

    def render(self) -> RenderableType:
        return Group(self.bar.make_tasks_table(self.bar.tasks), *map(_log_line, self.tail))

    def show(self, update: BuildUpdate) -> None:
        if update.step is not None:
            self._step(update.step)
        elif (p := update.progress) is not None:
            if self.step is None:
                self.step = self.bar.add_task(p.step, total=1.0, detail="")
            self.bar.update(self.step, total=1.0, completed=p.fraction, detail=p.detail)
        elif update.log is not None:
            # A new list each time: the redraw thread reads the old one meanwhile.
            self.tail = (self.tail + update.log.text.splitlines())[-TAIL:]
        elif update.state is not None:
            self.console.print(Text(state_line(update)))

    def _step(self, step: StepUpdate) -> None:
        if self.step is not None:
            self.bar.remove_task(self.step)
            self.step = None
        if step.state == StepState.RUNNING:
            self.step = self.bar.add_task(f"{where(step)} {step.name}", total=None, detail="")
        else:
            self.console.print(Text(step_line(step)))
