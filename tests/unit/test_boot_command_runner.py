"""Boot test commands without a VM: the guest's runner script (run here, with a
file for its serial port), the parsing of what it reports, the unit it is started
by, the failure message, the domain's second port and the recipe's settings."""

from __future__ import annotations

import json
import os
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from kiln_builder import cleanup, vm
from kiln_builder.isolation import sandbox
from kiln_builder.resources import OWNER_FILE, claim, claimed_tempdir, janitor
from kiln_builder.service.outcome import RECORD_OUTPUT_MAX, command_record
from kiln_builder.vm import (
    Accel,
    BootFailed,
    CommandsTimeout,
    DiskBoot,
    DomainSpec,
    Owner,
    console_tail,
    domain_xml,
)
from kiln_builder.vm.commands import (
    GUEST_DIR,
    UNIT,
    CommandFailed,
    CommandResult,
    add_to_root,
    failure_message,
    guest_files,
    overall_deadline,
    parse_results,
    raise_on_failure,
    runner_script,
    wait_for_results,
    write_results,
)
from kiln_common.proc import run_sync
from kiln_recipe import RecipeError, parse_recipe

COMMANDS = ["echo out; echo err >&2", "exit 3", "sleep 30"]


def run_guest_runner(tmp_path: Path, commands: list[str], timeout: int) -> str:
    """The runner as the guest runs it, with a plain file standing in for ttyS1."""
    (tmp_path / "commands").mkdir()
    for index, command in enumerate(commands):
        (tmp_path / "commands" / f"{index:04d}").write_text(command)
    port = tmp_path / "port"
    script = tmp_path / "run"
    script.write_text(runner_script(timeout, str(tmp_path), str(port)))
    run_sync(["sh", script])
    return port.read_text()


def test_the_runner_runs_every_command_in_order_and_reports_each(tmp_path: Path) -> None:
    results, done = parse_results(run_guest_runner(tmp_path, COMMANDS, 1), COMMANDS, 1)

    assert done
    assert [r.command for r in results] == COMMANDS
    first, second, third = results
    assert first.passed and first.exit_status == 0
    assert first.output == "out\nerr\n" and first.output_bytes == 8 and not first.truncated
    assert second.exit_status == 3 and not second.passed and not second.timed_out
    assert third.timed_out and third.exit_status == 124 and 1 <= third.seconds < 5


def test_the_runner_sends_only_the_end_of_a_long_output(tmp_path: Path) -> None:
    command = "head -c 100000 /dev/zero | tr '\\0' x; echo END"
    results, _ = parse_results(run_guest_runner(tmp_path, [command], 10), [command], 10)

    assert results[0].output_bytes == 100004
    assert len(results[0].output) == 64 * 1024 and results[0].output.endswith("xEND\n")
    assert results[0].truncated


def test_parsing_skips_noise_and_partial_lines_and_waits_for_done() -> None:
    line = {"index": 0, "status": 0, "ms": 1500, "bytes": 3, "output": "aGkK"}
    text = "\x1b[0mgarbage\r\n" + json.dumps(line) + "\r\n" + '{"index":1,"sta'
    results, done = parse_results(text, ["echo hi", "true"], 60)
    assert not done
    assert results == [CommandResult("echo hi", 0, 1.5, "hi\n", 3)]

    results, done = parse_results(text + '\n{"done":1}\n', ["echo hi", "true"], 60)
    assert done and len(results) == 1  # the partial line never became a result


def test_a_command_that_exits_124_by_itself_did_not_time_out() -> None:
    line = {"index": 0, "status": 124, "ms": 10, "bytes": 0, "output": ""}
    results, _ = parse_results(json.dumps(line) + "\n", ["exit 124"], 60)
    assert results[0].exit_status == 124 and not results[0].timed_out and not results[0].passed


def test_a_failure_names_the_command_its_status_and_its_output_tail() -> None:
    results = [
        CommandResult("cat /etc/os-release", 0, 0.1, "ok\n", 3),
        CommandResult("grep -q Cloudy page", 1, 0.2, "line 1\nno such file\n", 20),
        CommandResult("sleep 999", 124, 120.0, "", 0, timed_out=True),
    ]
    message = failure_message(results)
    assert message is not None
    assert "2 of 3 boot test commands failed" in message
    assert "test command 2 `grep -q Cloudy page` exited with status 1" in message
    assert "no such file" in message
    assert "test command 3 `sleep 999` timed out after 120s" in message
    assert "cat /etc/os-release" not in message
    with pytest.raises(CommandFailed):
        raise_on_failure(results)
    raise_on_failure(results[:1])  # all passed: no error


def test_the_unit_and_runner_go_into_the_root_enabled(tmp_path: Path) -> None:
    add_to_root(tmp_path, guest_files(["uptime", "true"], 42))

    unit = (tmp_path / "etc/systemd/system" / UNIT).read_text()
    # Wanted by multi-user.target yet ordered after it: no default dependencies.
    assert "After=multi-user.target" in unit and "DefaultDependencies=no" in unit
    assert "Type=oneshot" in unit and f"ExecStart=/{GUEST_DIR}/run" in unit
    link = tmp_path / "etc/systemd/system/multi-user.target.wants" / UNIT
    assert str(link.readlink()) == f"/etc/systemd/system/{UNIT}"
    runner = tmp_path / GUEST_DIR / "run"
    assert runner.stat().st_mode & 0o777 == 0o755
    assert "timeout -k 10 42 /bin/sh -c" in runner.read_text()
    assert "/dev/ttyS1" in runner.read_text()
    assert (tmp_path / GUEST_DIR / "commands/0000").read_text() == "uptime"
    assert (tmp_path / GUEST_DIR / "commands/0001").read_text() == "true"


def test_the_domain_gets_a_second_serial_port_only_when_asked(tmp_path: Path) -> None:
    spec = DomainSpec(
        name="kiln-x", uuid="8f6c2d6e-0d1e-4b8e-9a55-2b1f5e6b1c11", build_id="x",
        accel=Accel("tcg", "test"), disk=tmp_path / "o.qcow2",
        machine=DiskBoot(tmp_path / "d.raw"), console_log=tmp_path / "console.log",
        network="user", owner=Owner("h", 1, None), vcpus=1,
    )  # fmt: skip
    ports = ET.fromstring(domain_xml(spec)).findall("devices/serial")
    assert [p.find("target").get("port") for p in ports] == ["0"]  # type: ignore[union-attr]

    channel = tmp_path / "results.log"
    spec = DomainSpec(**{**spec.__dict__, "channel_log": channel})
    ports = ET.fromstring(domain_xml(spec)).findall("devices/serial")
    assert [p.find("target").get("port") for p in ports] == ["0", "1"]  # type: ignore[union-attr]
    assert ports[1].find("source").get("path") == str(channel)  # type: ignore[union-attr]


def test_the_host_waits_for_the_boot_and_every_command_timeout() -> None:
    # 300 s boot, 2 commands of 60 s, each with its slack, and a little more.
    assert overall_deadline(1000.0, 300, 2, 60) == 1000 + 300 + 2 * (60 + 15) + 30


def test_results_file_and_build_record(tmp_path: Path) -> None:
    long = "y" * 10_000 + "\nthe end\n"
    results = [CommandResult("true", 0, 0.01, "", 0), CommandResult("big", 2, 1.0, long, 10009)]
    written = json.loads(write_results(tmp_path / "w-1.tests.json", results).read_text())
    assert [c["passed"] for c in written["commands"]] == [True, False]
    assert written["commands"][1]["output"] == long

    record = command_record(results[1])
    assert record.command == "big" and record.exit_status == 2 and not record.passed
    assert len(record.output) == RECORD_OUTPUT_MAX and record.output.endswith("the end\n")
    assert record.output_bytes == 10009


RECIPE = """\
name: t
version: "1"
from:
  bootstrap: {distro: debian, release: bookworm}
test:
  commands: [uptime]
"""


def test_command_timeout_defaults_to_two_minutes_and_takes_durations() -> None:
    assert parse_recipe(RECIPE, Path(".")).test.command_timeout == 120
    recipe = parse_recipe(RECIPE + "  command_timeout: 5m\n", Path("."))
    assert recipe.test.command_timeout == 300
    with pytest.raises(RecipeError, match=r"test\.command_timeout"):
        parse_recipe(RECIPE + "  command_timeout: 2h\n", Path("."))


class FakeVm:
    """Stands in for a running domain: its console log and whether it runs."""

    def __init__(self, console: Path, running: bool = True) -> None:
        self.name = "kiln-fake"
        self.console_log = console
        self._running = running

    async def running(self) -> bool:
        return self._running

    def _evidence(self) -> tuple[Path, list[str], Accel]:
        return self.console_log, console_tail(self.console_log), Accel("tcg", "test")


def one_result_reported(tmp_path: Path) -> tuple[Path, Path]:
    channel = tmp_path / "results.log"
    line = {"index": 0, "status": 0, "ms": 5, "bytes": 0, "output": ""}
    channel.write_text(json.dumps(line) + "\n")
    console = tmp_path / "console.log"
    console.write_text("Debian GNU/Linux 12 kiln ttyS0\n\nkiln login: \nBUG: soft lockup\n")
    return channel, console


async def test_a_hung_guest_fails_with_the_command_it_was_on_and_the_console(
    tmp_path: Path,
) -> None:
    channel, console = one_result_reported(tmp_path)
    vm = FakeVm(console)
    with pytest.raises(CommandsTimeout) as hung:
        await wait_for_results(vm, channel, ["true", "sleep 5"], 60, deadline=0.0)  # type: ignore[arg-type]
    message = str(hung.value)
    assert "test command 2 of 2 (`sleep 5`) did not report in time" in message
    assert "BUG: soft lockup" in message  # the console's last lines


async def test_a_guest_that_stops_fails_at_once(tmp_path: Path) -> None:
    channel, console = one_result_reported(tmp_path)
    vm = FakeVm(console, running=False)
    with pytest.raises(BootFailed, match="stopped while running test command 2"):
        await wait_for_results(vm, channel, ["true", "sleep 5"], 60, deadline=1e12)  # type: ignore[arg-type]


async def test_the_janitor_removes_only_claimed_scratch_dirs_of_dead_builders(
    tmp_path: Path,
) -> None:
    for name in ("kiln-vm-dead", "kiln-vm-live", "kiln-vm-unclaimed", "other-dead"):
        (tmp_path / name).mkdir()
    (tmp_path / "kiln-vm-dead" / OWNER_FILE).write_text("4194999 1\n")  # no such process
    (tmp_path / "other-dead" / OWNER_FILE).write_text("4194999 1\n")
    claim(tmp_path / "kiln-vm-live")

    released = await janitor(tmp_path, "kiln-vm-*", claimed_only=True)

    assert released == [f"workspace {tmp_path / 'kiln-vm-dead'}"]
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == ["kiln-vm-live", "kiln-vm-unclaimed", "other-dead"]


@pytest.mark.parametrize("prefix", [vm.SCRATCH_PREFIX, sandbox.SCRATCH_PREFIX])
async def test_a_killed_builders_scratch_dirs_are_reclaimed_at_the_next_start(
    prefix: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A VM's or a sandbox's scratch dir in the temp dir is claimed while its
    # builder lives, so the next builder's clean-up knows a dead one's leftovers.
    with claimed_tempdir(prefix, tmp_path) as scratch:
        assert (scratch / OWNER_FILE).read_text().split()[0] == str(os.getpid())
    assert not scratch.exists()
    (tmp_path / f"{prefix}dead").mkdir()
    (tmp_path / f"{prefix}dead" / OWNER_FILE).write_text("4194999 1\n")  # no such process
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.setattr(cleanup, "answers", lambda uri: "no libvirtd here")

    released = await cleanup.reclaim_all(tmp_path / "work")

    assert f"workspace {tmp_path / f'{prefix}dead'}" in released
    assert list(tmp_path.iterdir()) == []
