"""How the kiln command shows work as it goes: a transfer's bytes (with rate
and time left) and a followed build's steps, progress bar and log tail.

Progress goes to stderr, never stdout: stdout carries only the result (an
id, a record, JSON), which is what scripts capture. One Display is chosen per
command by choose():

- stderr a terminal: rich's live bars, fitted to the terminal's width
  (kiln_cli.progress_rich);
- stderr not a terminal: plain lines, one per event, with no escape codes
  and no carriage-return redraws (Plain);
- --quiet, or --json when stderr is not a terminal: nothing (Quiet), so the
  stderr of a script's `--json` run holds only its one JSON error object.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Protocol, TextIO

from kiln_client.transfer import Progress
from kiln_common import humane
from kiln_common.builds import BuildState, BuildUpdate, StepState, StepUpdate
from kiln_common.lifecycle import step_word
from kiln_common.lifecycle import word as state_word


class BuildView(Protocol):
    """Shows a followed build's updates as they come."""

    def show(self, update: BuildUpdate) -> None: ...


class Display(Protocol):
    """What a verb calls to show progress; chosen once per command."""

    def note(self, text: str) -> None:
        """An informational line (not a result, not an error)."""

    def transfer(self, what: str, total: int) -> AbstractContextManager[Progress | None]:
        """The progress callback of a transfer of total bytes, for as long
        as the with block runs; what names it (`push disk.img`)."""

    def build(self) -> AbstractContextManager[BuildView]:
        """The view of a followed build, for as long as the with block runs."""


def choose(*, quiet: bool, as_json: bool, stream: TextIO | None = None) -> Display:
    """The display for a command's flags and its stderr."""
    out = sys.stderr if stream is None else stream
    terminal = out.isatty() and os.environ.get("TERM", "") not in ("dumb", "unknown")
    if quiet or (as_json and not terminal):
        return Quiet()
    if terminal:
        from kiln_cli.progress_rich import Rich  # only a terminal pays for importing rich

        return Rich(out)
    return Plain(out)


def of(args: argparse.Namespace) -> Display:
    """The display for a verb's parsed command line (--quiet, --json)."""
    return choose(quiet=bool(getattr(args, "quiet", False)),
                  as_json=bool(getattr(args, "json", False)))  # fmt: skip


# ---- the words, shared by both displays ---------------------------------------------------


def where(step: StepUpdate) -> str:
    """`[2/5]`: the step's place among the build's steps."""
    return f"[{step.index}/{step.total}]" if step.total else "[-]"


def step_line(step: StepUpdate) -> str:
    """A step that started (`[1/3] bootstrap ...`) or ended (`... done in 1.2s`)."""
    if step.state == StepState.RUNNING:
        return f"{where(step)} {step.name} ..."
    note = " (cached)" if step.cached else ""
    return f"{where(step)} {step.name} {step_word(step.state)} in {step.seconds:.1f}s{note}"


def state_line(update: BuildUpdate) -> str:
    """`build running on worker-1`, `build succeeded`."""
    assert update.state is not None
    worker = update.build.worker if update.build else ""
    on = f" on {worker}" if update.state == BuildState.RUNNING and worker else ""
    return f"build {state_word(update.state)}{on}"


# ---- nothing: --quiet ---------------------------------------------------------------------


class _Unseen:
    def show(self, update: BuildUpdate) -> None:
        pass


class Quiet:
    """Shows nothing: the result and errors are all a quiet command prints."""

    def note(self, text: str) -> None:
        pass

    @contextmanager
    def transfer(self, what: str, total: int) -> Iterator[Progress | None]:
        yield None

    @contextmanager
    def build(self) -> Iterator[BuildView]:
        yield _Unseen()


# ---- plain lines: not a terminal ----------------------------------------------------------


class PlainTransfer:
    """A line each time another quarter of the bytes has moved, and one at
    the end with the average rate. The callback may come from any thread."""

    def __init__(self, out: TextIO, what: str, total: int, clock: Callable[[], float]) -> None:
        self.out, self.what, self.total, self.clock = out, what, total, clock
        self.done = 0
        self.resumed: int | None = None  # the first call: what an earlier run moved
        self.start = clock()
        self.quarters = 0
        self._lock = threading.Lock()

    def __call__(self, n: int) -> None:
        with self._lock:
            self.done += n
            if self.resumed is None:
                self.resumed = n
            quarters = 4 * self.done // self.total if self.total else 4
            if self.quarters < quarters < 4:
                self.quarters = quarters
                self._line(f"{100 * self.done // self.total}% ({humane.size(self.done)} of "
                           f"{humane.size(self.total)}){self._rate(', ')}")  # fmt: skip

    def finish(self) -> None:
        self._line(
            f"{humane.size(self.done)} in {self.clock() - self.start:.1f}s{self._rate(', ')}"
        )

    def _rate(self, before: str) -> str:
        moved = self.done - (self.resumed or 0)
        took = self.clock() - self.start
        return f"{before}{humane.size(moved / took)}/s" if moved > 0 and took > 0 else ""

    def _line(self, text: str) -> None:
        print(f"{self.what}: {text}", file=self.out, flush=True)


class PlainBuild:
    """A followed build as lines: each state and each step's start and end.
    Progress and log lines are left out (`kiln build logs ID` has the log)."""

    def __init__(self, out: TextIO) -> None:
        self.out = out

    def show(self, update: BuildUpdate) -> None:
        if update.step is not None:
            print(step_line(update.step), file=self.out, flush=True)
        elif update.state is not None:
            print(state_line(update), file=self.out, flush=True)


class Plain:
    def __init__(self, out: TextIO, clock: Callable[[], float] = time.monotonic) -> None:
        self.out = out
        self.clock = clock

    def note(self, text: str) -> None:
        print(text, file=self.out, flush=True)

    @contextmanager
    def transfer(self, what: str, total: int) -> Iterator[Progress | None]:
        shown = PlainTransfer(self.out, what, total, self.clock)
        yield shown
        shown.finish()  # only when it went through: an error says the rest

    @contextmanager
    def build(self) -> Iterator[BuildView]:
        yield PlainBuild(self.out)
