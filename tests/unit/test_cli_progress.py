"""How the kiln command shows progress (kiln_cli.progress): on a terminal,
rich's bars fitted to its width, with a transfer's rate and time left; plain
lines without escape codes elsewhere; nothing under --quiet."""

from __future__ import annotations

import io
import re

import pytest
from rich.live import Live

from kiln_cli import progress
from kiln_cli.build_cmd import print_outcome
from kiln_cli.main import _global_options, build_parser
from kiln_cli.progress import Plain, Quiet, choose
from kiln_cli.progress_rich import KilnConsole, Rich, RichBuild, running
from kiln_common.builds import (
    Build,
    BuildArtifact,
    BuildError,
    BuildState,
    BuildUpdate,
    LogLine,
    Progress,
    StepState,
    StepUpdate,
)

MiB = 1 << 20
CSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
LONG_LOG = "apt: " + "unpacking linux-image-6.1.0-amd64 " * 5  # 175 columns: over 150


def terminal(width: int) -> tuple[io.StringIO, KilnConsole]:
    out = io.StringIO()
    return out, KilnConsole(file=out, width=width, force_terminal=True, color_system=None)


def screen_lines(written: str) -> list[str]:
    """What each redraw put on a line of the screen: the escape codes taken
    out, cut at each newline and carriage return."""
    return [ln for ln in re.split(r"[\r\n]", CSI.sub("", written)) if ln]


def cursor_shown_at_the_end(written: str) -> bool:
    """The live display hid the cursor while it drew, and showed it again."""
    return written.rindex("\x1b[?25h") > written.rindex("\x1b[?25l")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


STEPS = [
    BuildUpdate(state=BuildState.RUNNING, build=Build(worker="w1")),
    BuildUpdate(step=StepUpdate(name="bootstrap", state=StepState.RUNNING, index=1, total=3)),
    BuildUpdate(log=LogLine(text=LONG_LOG)),
    BuildUpdate(progress=Progress(step="bootstrap", fraction=0.5, detail="unpacking 120 of 240")),
    BuildUpdate(
        step=StepUpdate(
            name="bootstrap", state=StepState.DONE, cached=True, seconds=1.25, index=1, total=3
        )
    ),
    BuildUpdate(state=BuildState.SUCCEEDED),
]


def follow_on(display: progress.Display, stop_after: int = len(STEPS)) -> None:
    with display.build() as view:
        for update in STEPS[:stop_after]:
            view.show(update)
        if isinstance(view, RichBuild):
            view.live.refresh()  # what the redraw thread shows by now


@pytest.mark.parametrize("width", [60, 200])
def test_a_followed_builds_bar_and_log_tail_fit_the_terminal(width: int) -> None:
    out, console = terminal(width)
    follow_on(Rich(out, console), stop_after=4)
    lines = screen_lines(out.getvalue())
    assert max(len(ln) for ln in lines) <= width
    bar = next(ln for ln in lines if ln.startswith("[1/3] bootstrap"))
    assert "50%" in bar and "━" in bar
    tail = next(ln for ln in lines if ln.startswith("  | apt: "))
    if width == 60:  # cut to the width, with an ellipsis
        assert len(tail) == 60 and tail.endswith("…")
    else:  # the whole line when it fits (no fixed 150-column cut)
        assert tail.rstrip() == f"  | {LONG_LOG}".rstrip()


def test_a_log_lines_escape_codes_cannot_move_the_cursor_or_clear_the_screen() -> None:
    out, console = terminal(80)
    with Rich(out, console).build() as view:
        view.show(BuildUpdate(log=LogLine(text="\x1b[2J\x1b[H\x1b[31mE: \x1b[0mno such package")))
        assert isinstance(view, RichBuild)
        view.live.refresh()
    written = out.getvalue()
    assert "\x1b[2J" not in written and "\x1b[H" not in written
    assert "  | E: no such package" in screen_lines(written)


def test_a_followed_build_on_a_terminal_keeps_the_ended_steps_and_clears_the_bar() -> None:
    out, console = terminal(80)
    follow_on(Rich(out, console))
    written = out.getvalue()
    lines = screen_lines(written)
    assert "build running on w1" in lines and "build succeeded" in lines
    assert "[1/3] bootstrap done in 1.2s (cached)" in lines
    assert written.endswith("\x1b[2K")  # the live block erased at the end
    assert cursor_shown_at_the_end(written)


def test_a_live_build_display_is_stopped_by_ctrl_c() -> None:
    out, console = terminal(80)
    display = Rich(out, console)
    with pytest.raises(KeyboardInterrupt), display.build() as view:
        view.show(STEPS[1])
        raise KeyboardInterrupt
    assert cursor_shown_at_the_end(out.getvalue())


class InterruptedWhileStarting:
    """A live display that Ctrl-C interrupts after its first frame, before its
    redraw thread starts."""

    stopped = False

    def start(self) -> None:
        raise KeyboardInterrupt

    def stop(self) -> None:
        self.stopped = True


def test_a_display_interrupted_while_it_starts_is_stopped() -> None:
    drawn = InterruptedWhileStarting()
    with pytest.raises(KeyboardInterrupt), running(drawn):
        pass
    assert drawn.stopped


class CursorInterrupted(KilnConsole):
    """A terminal where Ctrl-C lands as the live display hides the cursor, before
    rich has pushed its render hook."""

    def show_cursor(self, show: bool = True) -> bool:
        if not show:
            raise KeyboardInterrupt
        return super().show_cursor(show)


def test_a_real_live_display_interrupted_while_it_starts_raises_the_interrupt() -> None:
    console = CursorInterrupted(file=io.StringIO(), width=60, force_terminal=True)
    with pytest.raises(KeyboardInterrupt), running(Live(console=console)):
        pass


@pytest.mark.parametrize("width", [60, 200])
def test_a_transfer_shows_its_rate_and_time_left_and_is_stopped_by_an_error(width: int) -> None:
    out, console = terminal(width)
    clock = Clock()
    with (
        pytest.raises(ConnectionError),
        Rich(out, console, clock).transfer("push disk.img", 8 * MiB) as moved,
    ):
        assert moved is not None
        moved(0)  # nothing from an earlier run
        for _ in range(4):
            clock.now += 1
            moved(MiB)
        raise ConnectionError("the service went away")
    written = out.getvalue()
    last = screen_lines(written)[-1]
    assert "4.0/8.0 MiB" in last and "1 MiB/s" in last
    assert "0:00:04" in last  # 4 MiB left at 1 MiB/s
    assert len(last) <= width
    assert cursor_shown_at_the_end(written)


def test_a_finished_transfer_shows_its_average_rate_and_time_taken() -> None:
    out, console = terminal(80)
    clock = Clock()
    with Rich(out, console, clock).transfer("get disk.img", 6 * MiB) as moved:
        assert moved is not None
        moved(2 * MiB)  # resumed: these were there already
        clock.now += 2
        moved(4 * MiB)  # one part: too few samples for rich's own estimate
    last = screen_lines(out.getvalue())[-1]
    assert "6.0/6.0 MiB" in last and "2 MiB/s" in last and "0:00:02" in last


def test_plain_lines_have_no_escape_codes_or_redraws() -> None:
    out = io.StringIO()
    clock = Clock()
    display = Plain(out, clock)
    display.note("build b1 queued (web 1)")
    follow_on(display)
    with display.transfer("push disk.img", 8 * MiB) as moved:
        assert moved is not None
        moved(0)
        for _ in range(8):
            clock.now += 0.5
            moved(MiB)
    written = out.getvalue()
    assert "\x1b" not in written and "\r" not in written
    assert written.splitlines() == [
        "build b1 queued (web 1)",
        "build running on w1",
        "[1/3] bootstrap ...",
        "[1/3] bootstrap done in 1.2s (cached)",
        "build succeeded",
        "push disk.img: 25% (2 MiB of 8 MiB), 2 MiB/s",
        "push disk.img: 50% (4 MiB of 8 MiB), 2 MiB/s",
        "push disk.img: 75% (6 MiB of 8 MiB), 2 MiB/s",
        "push disk.img: 8 MiB in 4.0s, 2 MiB/s",
    ]


def test_quiet_shows_nothing() -> None:
    display = Quiet()
    display.note("build b1 queued")
    follow_on(display)
    with display.transfer("push disk.img", MiB) as moved:
        assert moved is None  # the client is given no callback at all


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_the_display_is_chosen_from_the_terminal_quiet_and_json(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TERM", "xterm-256color")
    assert isinstance(choose(quiet=False, as_json=False, stream=Tty()), Rich)
    assert isinstance(choose(quiet=False, as_json=True, stream=Tty()), Rich)  # on stderr only
    assert isinstance(choose(quiet=True, as_json=False, stream=Tty()), Quiet)
    assert isinstance(choose(quiet=False, as_json=False, stream=io.StringIO()), Plain)
    # A script's --json run: its stderr holds the JSON error object and nothing else.
    assert isinstance(choose(quiet=False, as_json=True, stream=io.StringIO()), Quiet)
    monkeypatch.setenv("TERM", "dumb")
    assert isinstance(choose(quiet=False, as_json=False, stream=Tty()), Plain)


def test_quiet_is_taken_before_the_command_and_after_the_verb() -> None:
    head, rest = _global_options(["-q", "--storage", "h:1", "artifact", "ls"])
    assert head == ["-q", "--storage", "h:1"] and rest == ["artifact", "ls"]
    assert build_parser().parse_args([*head, *rest]).quiet
    assert build_parser().parse_args(["artifact", "ls", "--quiet"]).quiet
    assert not build_parser().parse_args(["artifact", "ls"]).quiet


def test_a_quiet_build_outcome_is_its_artifacts_and_why_it_failed(
    capsys: pytest.CaptureFixture[str],
) -> None:
    artifact = BuildArtifact(artifact_id="a1", kind="qcow2", name="web.qcow2", size=3)
    print_outcome(Build(id="b1", state=BuildState.SUCCEEDED, artifacts=[artifact]), quiet=True)
    shown = capsys.readouterr()
    assert shown.out.startswith("a1  qcow2") and shown.err == ""
    failed = Build(id="b2", state=BuildState.FAILED, error=BuildError(step="run", message="exit 3"))
    print_outcome(failed, quiet=True)
    assert capsys.readouterr().err.splitlines() == ["build b2 failed", "error in step run: exit 3"]
