"""The one external-process helper: argv, scrubbed env, readable errors, cancel."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest
from support import await_until, wait_until

from kiln_common.proc import ProcessError, ProcessTimeout, helper, run, run_sync, spawn, stop_pid


def running(pid: int) -> bool:
    """True unless pid is gone or a zombie (init here may not reap orphans)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state not in ("Z", "X")


async def test_run_captures_output_with_a_scrubbed_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("KILN_SECRET_TOKEN", "do-not-leak")
    result = await run(["sh", "-c", "echo hello; env"])
    assert result.returncode == 0
    assert result.stdout.startswith("hello\n")
    assert "KILN_SECRET_TOKEN" not in result.stdout
    assert "LANG=C.UTF-8" in result.stdout


async def test_a_failing_command_gives_a_readable_error() -> None:
    with pytest.raises(ProcessError) as caught:
        await run(["sh", "-c", "echo first; echo 'disk full' >&2; exit 3"])
    message = str(caught.value)
    assert "sh -c" in message and "exit status 3" in message and "disk full" in message


def test_a_missing_command_is_reported_not_raised_as_oserror() -> None:
    with pytest.raises(ProcessError, match="command not found"):
        run_sync(["kiln-no-such-command-here"])


async def test_cancelling_run_kills_the_whole_process_group(tmp_path: Path) -> None:
    marker = tmp_path / "child.pid"
    task = asyncio.create_task(
        run(["sh", "-c", f"sleep 300 & echo $! > {marker}; wait"], terminate_timeout=2)
    )
    await await_until("the child's pid", lambda: marker.exists() and marker.read_text().strip(), 5)
    child = int(marker.read_text())
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.sleep(0.2)
    assert not running(child)


def test_spawned_daemons_log_to_a_file_and_stop(tmp_path: Path) -> None:
    log = tmp_path / "d.log"
    proc = spawn(["sh", "-c", "echo started; exec sleep 300"], log_file=log)
    wait_until("the daemon's log", lambda: log.exists() and "started" in log.read_text(), 5, 0.02)
    stop_pid(proc.pid, timeout=5)
    assert not running(proc.pid)


async def test_a_time_limit_kills_the_command_and_its_children(tmp_path: Path) -> None:
    marker = tmp_path / "child.pid"
    with pytest.raises(ProcessTimeout, match=r"killed after its time limit of 0\.5s") as caught:
        await run(
            ["sh", "-c", f"echo started; sleep 300 & echo $! > {marker}; wait"],
            time_limit=0.5,
            terminate_timeout=2,
        )
    assert "started" in str(caught.value)
    await await_until("the child's end", lambda: not running(int(marker.read_text())), 5)


async def test_a_helper_lives_as_long_as_its_block() -> None:
    async with helper(["sleep", "300"]) as proc:
        assert running(proc.pid)
    assert proc.returncode is not None and not running(proc.pid)


async def test_started_sees_the_child_and_passed_fds_reach_it(tmp_path: Path) -> None:
    import os

    read_end, write_end = os.pipe()
    seen: list[int] = []

    async def started(pid: int) -> None:
        seen.append(pid)
        os.close(write_end)

    try:
        result = await run(
            [sys.executable, "-c", f"import os; os.write({write_end}, b'passed\\n')"],
            pass_fds=[write_end],
            started=started,
        )
        assert os.read(read_end, 100) == b"passed\n"
    finally:
        os.close(read_end)
    assert result.returncode == 0 and len(seen) == 1 and seen[0] > 0


async def test_on_line_gets_each_line_instead_of_the_log() -> None:
    lines: list[str] = []
    result = await run(["printf", "one\\r\\ntwo\\nthree"], on_line=lines.append)
    # A serial line's \r\n ends a line like \n does; the last line needs no newline.
    assert lines == ["one", "two", "three"]
    assert result.stdout == "one\r\ntwo\nthree"


CHILD = '["sh", "-c", "echo $$ > " + sys.argv[1] + "; exec sleep 60"]'
RUN_PARENT = f"""
import asyncio, sys
from kiln_common.proc import run
asyncio.run(run({CHILD}, die_with_parent=True))
"""
HELPER_PARENT = f"""
import asyncio, sys
from kiln_common.proc import helper
async def main():
    async with helper({CHILD}, die_with_parent=True):
        await asyncio.sleep(60)
asyncio.run(main())
"""


@pytest.mark.parametrize("parent_code", [RUN_PARENT, HELPER_PARENT], ids=["run", "helper"])
def test_die_with_parent_kills_the_command_when_its_parent_is_sigkilled(
    tmp_path: Path, parent_code: str
) -> None:
    import subprocess
    import sys

    pidfile = tmp_path / "child.pid"
    parent = subprocess.Popen([sys.executable, "-c", parent_code, str(pidfile)])
    try:
        child = int(
            wait_until(
                "the child's pid", lambda: pidfile.exists() and pidfile.read_text().strip(), 10
            )
        )
        parent.kill()
        parent.wait()
        wait_until("the child to die with its parent", lambda: not running(child), 5)
    finally:
        parent.kill()


GRPC_PARENT = """
import asyncio, os, sys
import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from kiln_common.proc import helper, run

async def busy(port):
    # Calls in flight while children are forked, as in a serving builder.
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while True:
            await stub.Check(health_pb2.HealthCheckRequest())

async def main():
    server = grpc.aio.server()
    port = server.add_insecure_port("127.0.0.1:0")
    health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), server)
    await server.start()
    calls = [asyncio.create_task(busy(port)) for _ in range(4)]
    said = []
    for n in range(10):
        said.append((await run(["echo", "ran"], die_with_parent=True)).stdout)
        mark = os.path.join(sys.argv[1], str(n))
        script = "echo held > " + mark + "; exec sleep 5"
        async with helper(["sh", "-c", script], die_with_parent=True):
            for _ in range(500):
                if os.path.exists(mark) and open(mark).read():
                    break
                await asyncio.sleep(0.01)
            said.append(open(mark).read() if os.path.exists(mark) else "")
    for call in calls:
        call.cancel()
    await server.stop(None)
    print(repr(said))

asyncio.run(main())
"""


def test_die_with_parent_works_in_a_process_serving_grpc(tmp_path: Path) -> None:
    """A service's children: gRPC's at-fork hooks broke a child started with a
    preexec_fn before it could exec (the sandbox's user namespace was not made)."""
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-c", GRPC_PARENT, str(tmp_path)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == repr(["ran\n", "held\n"] * 10)
