"""The one helper every external process goes through.

Each command is an argv list (never a shell), runs with a scrubbed environment
and stdin from /dev/null, is logged as a shell-quoted line, is terminated (then
killed) if its caller is cancelled, and fails with a readable error that names
the command, its exit status and the tail of its output.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shlex
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)
# Each line a command prints, as it prints it. Not propagated: a service's own
# log would drown in apt's output; the builder attaches it to the build's log.
OUTPUT_LOG = logging.getLogger("kiln.process-output")
OUTPUT_LOG.propagate = False

# Variables a child may inherit; everything else is dropped so a build does not
# depend on whoever started the service.
_KEPT = (
    "PATH",
    "HOME",
    "TMPDIR",
    "USER",
    "LOGNAME",
    "TERM",
    "http_proxy",
    "https_proxy",
    "no_proxy",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "NO_PROXY",
)
TAIL_LINES = 20


class ProcessError(Exception):
    """A command failed; the message is readable as it is."""

    def __init__(self, argv: Sequence[str], returncode: int, output: str) -> None:
        self.argv = list(argv)
        self.returncode = returncode
        self.output = output
        tail = "\n".join(output.rstrip().splitlines()[-TAIL_LINES:])
        what = f"killed by signal {-returncode}" if returncode < 0 else f"exit status {returncode}"
        super().__init__(f"{shlex.join(argv)} failed ({what})" + (f":\n{tail}" if tail else ""))


class ProcessTimeout(ProcessError):
    """A command ran longer than its time limit and was killed, with its children."""

    def __init__(self, argv: Sequence[str], seconds: float, output: str) -> None:
        super().__init__(argv, -9, output)
        tail = "\n".join(output.rstrip().splitlines()[-TAIL_LINES:])
        self.args = (
            f"{shlex.join(argv)} was killed after its time limit of {seconds:g}s"
            + (f":\n{tail}" if tail else ""),
        )

    def __str__(self) -> str:
        return str(self.args[0])


@dataclass(frozen=True)
class Result:
    argv: list[str]
    returncode: int
    stdout: str


def scrubbed_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k in _KEPT}
    env.setdefault("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
    env["LANG"] = env["LC_ALL"] = "C.UTF-8"
    env.update(extra or {})
    return env


def _announce(argv: Sequence[str], cwd: Path | None) -> list[str]:
    argv = [str(a) for a in argv]
    if not argv:
        raise ValueError("empty command")
    log.info("run: %s%s", shlex.join(argv), f" (in {cwd})" if cwd else "")
    return argv


async def run(
    argv: Sequence[str | os.PathLike[str]],
    *,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    check: bool = True,
    terminate_timeout: float = 10.0,
    log_output: bool = True,
    time_limit: float | None = None,
    pass_fds: Sequence[int] = (),
    started: Callable[[int], Awaitable[None]] | None = None,
    on_line: Callable[[str], None] | None = None,
    die_with_parent: bool = False,
) -> Result:
    """Runs a command to completion; stdout and stderr are captured together
    and, unless log_output is false (a command that echoes thousands of
    lines of no interest), logged line by line to OUTPUT_LOG, or handed to
    on_line instead when given (a command whose lines the caller interprets).

    time_limit kills the whole process group after that many seconds (raising
    ProcessTimeout); pass_fds are inherited by the child; started(pid) is
    awaited once the child runs, while its output is read (a sandbox sets up
    the child's network there while the child waits for it). die_with_parent:
    the kernel kills the command if this process dies, even by SIGKILL (for a
    VM that must not outlive its builder)."""
    args = _announce([os.fspath(a) for a in argv], cwd)
    proc = await asyncio.create_subprocess_exec(
        *(_with_parent(args) if die_with_parent else args),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=scrubbed_env(env),
        cwd=cwd,
        start_new_session=True,  # so cancel can signal the whole process group
        pass_fds=tuple(pass_fds),
    )
    reading = asyncio.create_task(_read_output(proc, log_output, on_line))
    try:
        async with asyncio.timeout(time_limit):
            if started is not None:
                await started(proc.pid)
            text = await asyncio.shield(reading)
            await proc.wait()
    except TimeoutError:
        await _stop(proc, terminate_timeout)
        raise ProcessTimeout(args, time_limit or 0.0, await reading) from None
    except BaseException:
        await _stop(proc, terminate_timeout)
        reading.cancel()
        raise
    assert proc.returncode is not None
    if check and proc.returncode != 0:
        raise ProcessError(args, proc.returncode, text)
    return Result(args, proc.returncode, text)


def _with_parent(args: list[str]) -> list[str]:
    """args run by setpriv, which asks the kernel to SIGKILL them when this
    process dies. Not a preexec_fn: Python runs its at-fork hooks for one, and
    gRPC's (in a service) broke the child before its exec."""
    return ["setpriv", "--pdeathsig", "KILL", "--", *args]


async def _read_output(
    proc: asyncio.subprocess.Process,
    log_output: bool,
    on_line: Callable[[str], None] | None = None,
) -> str:
    """All the output, each complete line logged to OUTPUT_LOG (or handed to
    on_line) as it arrives."""
    emit = on_line or (lambda line: OUTPUT_LOG.info("%s", line))
    assert proc.stdout is not None
    chunks: list[bytes] = []
    partial = b""
    while chunk := await proc.stdout.read(65536):
        chunks.append(chunk)
        if not log_output:
            continue
        *lines, partial = (partial + chunk).split(b"\n")
        for line in lines:
            # A progress meter redraws with \r: only its last state is a line.
            emit(line.rstrip(b"\r").rsplit(b"\r", 1)[-1].decode(errors="replace"))
        if len(partial) > 65536:  # no newline in sight: log what there is
            emit(partial.decode(errors="replace"))
            partial = b""
    if partial:
        emit(partial.decode(errors="replace"))
    return b"".join(chunks).decode(errors="replace")


async def _stop(proc: asyncio.subprocess.Process, grace: float) -> None:
    if proc.returncode is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, 15)
    try:
        await asyncio.wait_for(proc.wait(), grace)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, 9)
        await proc.wait()


def run_sync(
    argv: Sequence[str | os.PathLike[str]],
    *,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    check: bool = True,
    timeout: float | None = None,
) -> Result:
    """The blocking twin of run(), for command-line tools and set-up code."""
    args = _announce([os.fspath(a) for a in argv], cwd)
    try:
        done = subprocess.run(
            args,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=scrubbed_env(env),
            cwd=cwd,
            timeout=timeout,
            check=False,
        )
    except FileNotFoundError as exc:
        raise ProcessError(args, 127, f"{args[0]}: command not found") from exc
    text = done.stdout.decode(errors="replace")
    if check and done.returncode != 0:
        raise ProcessError(args, done.returncode, text)
    return Result(args, done.returncode, text)


def spawn(
    argv: Sequence[str | os.PathLike[str]],
    *,
    log_file: Path,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> subprocess.Popen[bytes]:
    """Starts a long-running daemon detached from the caller's session, its
    output appended to log_file. The caller owns stopping it (see stop_pid)."""
    args = _announce([os.fspath(a) for a in argv], cwd)
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with open(log_file, "ab") as out:
        try:
            return subprocess.Popen(
                args,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=scrubbed_env(env),
                cwd=cwd,
                start_new_session=True,
            )
        except FileNotFoundError as exc:
            raise ProcessError(args, 127, f"{args[0]}: command not found") from exc


@contextlib.asynccontextmanager
async def helper(
    argv: Sequence[str | os.PathLike[str]],
    *,
    env: Mapping[str, str] | None = None,
    pass_fds: Sequence[int] = (),
    terminate_timeout: float = 5.0,
    die_with_parent: bool = False,
) -> AsyncIterator[asyncio.subprocess.Process]:
    """A helper process that lives exactly as long as the with block (the
    user-mode network of a sandbox, a test's browser): its output goes to
    OUTPUT_LOG; on exit, or on any error or cancel, its process group is
    terminated, then killed. die_with_parent: as for run(), the kernel kills
    it if this process dies, even by SIGKILL, when no finally block runs."""
    args = _announce([os.fspath(a) for a in argv], None)
    try:
        proc = await asyncio.create_subprocess_exec(
            *(_with_parent(args) if die_with_parent else args),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=scrubbed_env(env),
            start_new_session=True,
            pass_fds=tuple(pass_fds),
        )
    except FileNotFoundError as exc:
        raise ProcessError(args, 127, f"{args[0]}: command not found") from exc
    reading = asyncio.create_task(_read_output(proc, True))
    try:
        yield proc
    finally:
        await _stop(proc, terminate_timeout)
        with contextlib.suppress(BaseException):
            await asyncio.wait_for(reading, terminate_timeout)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child of ours still answers kill(0): reap it if it is ours.
    with contextlib.suppress(ChildProcessError):
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return False
    # Someone else's zombie (an orphan whose init has not reaped it yet) is dead too.
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state not in ("Z", "X")


def stop_pid(pid: int, timeout: float = 10.0) -> None:
    """SIGTERM, wait up to timeout, then SIGKILL: for daemons started by spawn()."""
    import time

    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, 15)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not pid_alive(pid):
            return
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, 9)


def process_start(pid: int) -> int | None:
    """A process's start time (clock ticks after boot) from /proc, or None if it
    is gone or a zombie. With the pid it names a process even after pid reuse."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return None if fields[0] in ("Z", "X") else int(fields[19])
