"""What the kiln command shows as it goes, run as a user would against a
real `kiln up` stack. In a terminal (a pseudo-terminal with a set window
size): `artifact push` and `get` draw a bar with the rate and the time left
or taken, and a followed build its state lines and a log tail, no line wider
than the window; Ctrl-C stops the bar and shows the cursor again. With
stderr a pipe: plain lines, no escape codes. With --quiet: the result alone.
Progress is on stderr: stdout holds the result only."""

from __future__ import annotations

import fcntl
import os
import pty
import re
import select
import signal
import struct
import subprocess
import termios
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from support import KILN, kiln, payload

from kiln_common.home import Stack
from kiln_common.ids import new_id

pytestmark = pytest.mark.e2e

COLUMNS = 60
CSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
RATE = re.compile(r"\d+(\.\d)? [KMGT]iB/s")  # kiln_common.humane.size, a second
CLOCK = re.compile(r"\d+:\d\d:\d\d")  # rich's time left, or time taken once done
ID = re.compile(r"^[0-9a-z]{26}$")


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    home = tmp_path_factory.mktemp("progress") / "kiln-home"
    environ = {**os.environ, "KILN_HOME": str(home), "TERM": "xterm-256color"}
    # Nothing but the window decides the width, nothing but the streams the display.
    for name in ("KILN_STORAGE", "COLUMNS", "LINES", "FORCE_COLOR", "TTY_COMPATIBLE"):
        environ.pop(name, None)
    try:
        kiln(environ, "up")
        yield environ
    finally:
        kiln(environ, "down", check=False)


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("files") / "disk.img"
    path.write_bytes(payload(24 * 1024 * 1024 + 5, seed=20))  # five parts of 5 MiB
    return path


@dataclass
class Run:
    returncode: int
    screen: str  # what the terminal received, escape codes and all
    stdout: str  # when stdout was a pipe

    def lines(self) -> list[str]:
        """Each line as drawn: escape codes out, cut at newlines and carriage returns."""
        return [ln for ln in re.split(r"[\r\n]", CSI.sub("", self.screen)) if ln]


def in_terminal(
    env: dict[str, str], *args: str, stdout_pipe: bool = False, ctrl_c_at: str = ""
) -> Run:
    """kiln with a pseudo-terminal of COLUMNS x 24 as its stdin and stderr,
    and its stdout unless stdout_pipe; Ctrl-C (SIGINT) once the terminal shows
    ctrl_c_at, if given."""
    control, terminal = pty.openpty()
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 24, COLUMNS, 0, 0))
    out = subprocess.PIPE if stdout_pipe else terminal
    proc = subprocess.Popen(
        [KILN, *args],
        stdin=terminal,
        stdout=out,
        stderr=terminal,
        env=env,
        # A test run in the background inherits SIGINT ignored; kiln must hear it
        # as it does from a terminal (as test_bake's bake does).
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    # The terminal's side stays open here until kiln has ended and all it
    # wrote is read: once no process holds it, Linux may drop what is unread.
    screen = bytearray()
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline:
            if select.select([control], [], [], 0.1)[0]:
                screen += os.read(control, 65536)
                if ctrl_c_at and ctrl_c_at.encode() in screen:
                    proc.send_signal(signal.SIGINT)
                    ctrl_c_at = ""
            elif proc.poll() is not None:
                break  # ended, and nothing of it left to read
        else:
            raise AssertionError(f"kiln {' '.join(args)} still running after 60s: {screen!r}")
        stdout = proc.stdout.read().decode() if proc.stdout else ""
    finally:
        os.close(control)
        os.close(terminal)
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        if proc.stdout:
            proc.stdout.close()
    text = screen.decode()
    assert "Traceback" not in text
    return Run(proc.returncode, text, stdout)


def test_a_push_in_a_terminal_shows_its_rate_and_time_within_the_width(
    env: dict[str, str], image: Path
) -> None:
    run = in_terminal(env, "artifact", "push", str(image), "--part-size", "5")
    assert run.returncode == 0, run.screen
    lines = run.lines()
    assert max(len(line) for line in lines) <= COLUMNS, lines
    bars = [line for line in lines if line.startswith("push disk.img")]
    assert any("24.0/24.0 MiB" in b and RATE.search(b) and CLOCK.search(b) for b in bars), lines
    assert ID.match(lines[-1])  # the result, after the bar
    assert "\x1b[?25h" in run.screen  # the cursor shown again


def test_a_download_in_a_terminal_shows_its_rate_and_stdout_a_pipe_holds_only_the_id(
    env: dict[str, str], image: Path, tmp_path: Path
) -> None:
    pushed = in_terminal(env, "artifact", "push", str(image), stdout_pipe=True)
    assert pushed.returncode == 0, pushed.screen
    artifact_id = pushed.stdout.strip()
    assert ID.match(artifact_id) and pushed.stdout == artifact_id + "\n"
    assert artifact_id not in pushed.screen and RATE.search(pushed.screen)

    got = in_terminal(env, "artifact", "get", artifact_id, "-o", str(tmp_path / "copy.img"))
    assert got.returncode == 0, got.screen
    assert (tmp_path / "copy.img").read_bytes() == image.read_bytes()
    lines = got.lines()
    assert max(len(line) for line in lines) <= COLUMNS, lines
    assert any(RATE.search(b) and CLOCK.search(b) for b in lines if b.startswith("get copy.img"))


def test_a_push_with_no_terminal_prints_plain_lines(env: dict[str, str], image: Path) -> None:
    done = kiln(env, "artifact", "push", str(image), "--part-size", "5")
    assert ID.match(done.stdout.strip())
    assert "\x1b" not in done.stderr and "\r" not in done.stderr
    lines = done.stderr.splitlines()
    assert lines[-1].startswith("push disk.img: 24 MiB in ") and RATE.search(lines[-1])
    assert all(line.startswith("push disk.img: ") for line in lines), lines


def test_quiet_prints_the_id_alone_before_or_after_the_verb(
    env: dict[str, str], image: Path
) -> None:
    before = in_terminal(env, "--quiet", "artifact", "push", str(image))
    assert before.returncode == 0, before.screen
    assert ID.match(before.screen.strip()), before.screen  # no bar, no escape codes
    after = kiln(env, "artifact", "push", str(image), "-q", "--label", "q=1")
    assert ID.match(after.stdout.strip()) and after.stderr == ""


@contextmanager
def storage_held(env: dict[str, str]) -> Iterator[None]:
    """The stack's storage service stopped (SIGSTOP) for the with block: a push's
    first call then waits, its bar drawn, until the block ends (SIGCONT)."""
    stack = Stack.load(Path(env["KILN_HOME"]))
    assert stack is not None
    pid = stack.pids["storage"]
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


def test_ctrl_c_during_a_push_in_a_terminal_leaves_it_sane(
    env: dict[str, str], image: Path
) -> None:
    # Storage held still, so the interrupt lands while the push waits under its
    # bar (a loopback push of megabytes can end before a signal is sent).
    with storage_held(env):
        run = in_terminal(env, "artifact", "push", str(image), ctrl_c_at="push disk")
    assert run.returncode == 130, run.screen
    assert run.lines()[-1] == "kiln: interrupted", repr(run.screen)
    # The bar hid the cursor while it drew and showed it again when stopped.
    assert run.screen.rindex("\x1b[?25h") > run.screen.rindex("\x1b[?25l")


def test_a_followed_build_in_a_terminal_fits_its_log_tail_to_the_width(
    env: dict[str, str], tmp_path: Path
) -> None:
    """A build that fails at once (its base is stored nowhere): no image is built."""
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(f'name: gone\nversion: "1"\nfrom:\n  image: {{artifact: {new_id()}}}\n'
                      "outputs: [qcow2]\n")  # fmt: skip
    run = in_terminal(env, "build", str(recipe), "--follow", stdout_pipe=True)
    assert run.returncode == 1, run.screen
    lines = run.lines()
    assert "build running on " in run.screen and "build failed" in lines
    ended = re.compile(r"build [0-9a-z]{26} failed")  # the outcome, after the live display
    outcome = next(i for i, line in enumerate(lines) if ended.fullmatch(line))
    drawn = lines[:outcome]  # the live display; the outcome after it is printed whole
    tail = [line for line in drawn if line.startswith("  | ")]
    assert tail and max(len(line) for line in drawn) <= COLUMNS, drawn
    assert any(line.endswith("…") for line in tail)  # a long log line, cut to the window
    assert "error: artifact " in lines[outcome + 1]
    assert run.screen.rindex("\x1b[?25h") > run.screen.rindex("\x1b[?25l")
    assert "gone-1.build.log" in run.stdout and "gone-1.build.log" not in run.screen
