"""Boot test commands: a recipe's `test.commands` run inside the booted guest.

The way in is added to a throwaway copy of the image only, never to the image:
- the image's raw disk is copied sparsely into the VM's scratch directory, and
  the copy's root filesystem (the partition holding etc/os-release) is
  loop-mounted to add a systemd unit, kiln-test.service, with its runner script
  and the commands, one file each;
- the unit starts once multi-user.target is reached and runs every command in
  order as root (`/bin/sh -c`, under `timeout`), writing one JSON line per
  command, then a "done" line, to the guest's second serial port (ttyS1), which
  libvirt writes to a file on the host;
- the host reads that file while it waits, as wait_for_login reads the console.
The domain and the copy go on every path (success, failure, cancel). A copy costs
about a second per GiB of data written (measured in docs/builder-service.md), a
small part of a boot under TCG; qemu-img cannot write into a filesystem inside a
qcow2 overlay without nbd, which this kind of host lacks.

The runner needs only the shell and coreutils (timeout, date, tail, base64, stty),
all essential in Debian and Ubuntu.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from kiln_builder import rootfs
from kiln_builder.imageroot import ImageRoot
from kiln_builder.libvirtd import ensure_libvirtd
from kiln_builder.vm.accel import host_accel
from kiln_builder.vm.domain import DiskBoot, disk_format
from kiln_builder.vm.runner import (
    GROW_TEST_BYTES,
    BootFailed,
    BootResult,
    BootTimeout,
    Vm,
    VmRunner,
    _read_from,
    _scratch_dir,
)
from kiln_common.errors import FailedPrecondition
from kiln_common.proc import run

log = logging.getLogger(__name__)

OUTPUT_MAX = 64 * 1024  # bytes of each command's output kept (its end)
GUEST_DIR = "var/lib/kiln-test"  # in the throwaway copy's root
UNIT = "kiln-test.service"
RESULTS_PORT = "/dev/ttyS1"  # the guest's second serial port; the domain's channel
KILL_AFTER = 10  # seconds after a command's timeout before it is killed outright
# Beyond the boot and the commands' own timeouts: the unit starting, the output's
# encoding, and the serial port's write, per command and once.
SLACK_PER_COMMAND = KILL_AFTER + 5
SLACK = 30.0

# Not DefaultDependencies: a unit wanted by multi-user.target would otherwise be
# ordered before it, and this one must run after it (the image fully up).
UNIT_TEXT = f"""\
[Unit]
Description=Kiln boot test commands (throwaway copy only)
DefaultDependencies=no
After=multi-user.target

[Service]
Type=oneshot
Environment=HOME=/root
ExecStart=/{GUEST_DIR}/run
StandardOutput=journal+console

[Install]
WantedBy=multi-user.target
"""

# Each command's output goes to a file on the guest's disk (not memory), and only
# its end is sent. Nothing here needs escaping in JSON: numbers and base64.
RUNNER = """\
#!/bin/sh
# Kiln's boot test commands, added to a throwaway copy of the image by the builder.
dir={dir}
exec 3>{port}
stty -F {port} raw -echo 2>/dev/null
index=0
for file in "$dir"/commands/*; do
    [ -f "$file" ] || continue
    start=$(date +%s%N)
    cd /root 2>/dev/null || cd /
    timeout -k {kill_after} {timeout} /bin/sh -c "$(cat "$file")" </dev/null >"$dir/output" 2>&1
    status=$?
    ms=$(( ($(date +%s%N) - start) / 1000000 ))
    size=$(wc -c <"$dir/output")
    tail -c {output_max} "$dir/output" | base64 -w0 >"$dir/output.b64"
    printf '{{"index":%d,"status":%d,"ms":%d,"bytes":%d,"output":"' \\
        "$index" "$status" "$ms" "$size" >&3
    cat "$dir/output.b64" >&3
    printf '"}}\\n' >&3
    index=$((index + 1))
    echo "kiln-test: command $index exited $status after ${{ms}} ms"
done
printf '{{"done":%d}}\\n' "$index" >&3
"""


class CommandFailed(FailedPrecondition):
    """A boot test command exited non-zero or timed out: the image is not what
    the recipe says. Not retried."""


class CommandsTimeout(BootTimeout):
    """The guest booted but did not report every command in time (it hung)."""


@dataclass(frozen=True)
class CommandResult:
    command: str
    exit_status: int
    seconds: float
    output: str  # the end of stdout and stderr together, at most OUTPUT_MAX bytes
    output_bytes: int  # how much the command wrote in all
    timed_out: bool = False

    @property
    def passed(self) -> bool:
        return self.exit_status == 0 and not self.timed_out

    @property
    def truncated(self) -> bool:
        return self.output_bytes > len(self.output.encode())


@dataclass(frozen=True)
class CommandsRun:
    boot: BootResult
    results: list[CommandResult]


# --- what goes into the guest ------------------------------------------------------


def runner_script(timeout: int, directory: str = f"/{GUEST_DIR}", port: str = RESULTS_PORT) -> str:
    """The guest's runner: the commands in directory/commands, results to port."""
    return RUNNER.format(
        dir=directory, port=port, timeout=timeout, kill_after=KILL_AFTER, output_max=OUTPUT_MAX
    )


def guest_files(commands: Sequence[str], timeout: int) -> dict[str, tuple[str, int]]:
    """{path under the root: (text, mode)} to add to the throwaway copy."""
    files = {
        f"{GUEST_DIR}/run": (runner_script(timeout), 0o755),
        f"etc/systemd/system/{UNIT}": (UNIT_TEXT, 0o644),
    }
    for index, command in enumerate(commands):
        files[f"{GUEST_DIR}/commands/{index:04d}"] = (command, 0o644)
    return files


WANTS_LINK = (f"/etc/systemd/system/multi-user.target.wants/{UNIT}", f"/etc/systemd/system/{UNIT}")
# Adds files to a throwaway disk without the host mounting it (vm isolation).
AddFiles = Callable[[Path, dict[str, tuple[str, int]]], Awaitable[None]]


def add_to_root(root: Path, files: dict[str, tuple[str, int]]) -> None:
    """Writes files into a mounted root and enables the unit, every path resolved
    inside the image (imageroot): links a run script planted cannot lead onto
    the host."""
    with ImageRoot(root) as tree:
        for relative, (text, mode) in files.items():
            tree.write(relative, text.encode(), mode)  # a link there is replaced
        tree.symlink(*WANTS_LINK)


# --- what comes out ----------------------------------------------------------------


def parse_results(
    text: str, commands: Sequence[str], timeout: int
) -> tuple[list[CommandResult], bool]:
    """(the results reported so far, whether the runner said it was done) from the
    results port's text. Lines that are not the runner's (a partial line still being
    written, noise) are skipped."""
    results: list[CommandResult] = []
    done = False
    for line in text.replace("\r", "").split("\n"):
        entry = _entry(line)
        if entry is None:
            continue
        if "done" in entry:
            done = True
        elif _is_result(entry, len(commands)) and entry["index"] == len(results):
            results.append(_result(entry, commands[entry["index"]], timeout))
    return results, done


def _entry(line: str) -> dict[str, Any] | None:
    if not line.startswith("{") or not line.endswith("}"):
        return None
    try:
        entry = json.loads(line)
    except ValueError:
        return None
    return entry if isinstance(entry, dict) else None


def _is_result(entry: dict[str, Any], count: int) -> bool:
    numbers = all(isinstance(entry.get(k), int) for k in ("index", "status", "ms", "bytes"))
    return numbers and 0 <= entry["index"] < count and isinstance(entry.get("output"), str)


def _result(entry: dict[str, Any], command: str, timeout: int) -> CommandResult:
    try:
        output = base64.b64decode(entry["output"], validate=True).decode(errors="replace")
    except (binascii.Error, ValueError):
        output = "(the output arrived garbled)"
    seconds = entry["ms"] / 1000
    # timeout(1) exits 124 when it stopped the command (137 if it had to kill it);
    # a command may exit 124 itself, so the time taken decides.
    timed_out = entry["status"] in (124, 137) and seconds >= timeout
    return CommandResult(command, entry["status"], seconds, output, entry["bytes"], timed_out)


def failure_message(results: Sequence[CommandResult], tail_lines: int = 20) -> str | None:
    """What to tell the user about the failed commands, or None if all passed."""
    failed = [(i, r) for i, r in enumerate(results) if not r.passed]
    if not failed:
        return None
    parts = []
    for index, result in failed:
        how = (
            f"timed out after {result.seconds:.0f}s"
            if result.timed_out
            else f"exited with status {result.exit_status}"
        )
        tail = "\n".join(result.output.splitlines()[-tail_lines:]) or "(no output)"
        parts.append(f"test command {index + 1} `{result.command}` {how}; its output ends:\n{tail}")
    return f"{len(failed)} of {len(results)} boot test commands failed: " + "\n".join(parts)


def raise_on_failure(results: Sequence[CommandResult]) -> None:
    if (message := failure_message(results)) is not None:
        raise CommandFailed(message)


def write_results(path: Path, results: Sequence[CommandResult]) -> Path:
    """The results as a JSON file (the build's `tests` artifact)."""
    entries = [{**asdict(r), "passed": r.passed, "truncated": r.truncated} for r in results]
    path.write_text(json.dumps({"commands": entries}, indent=2) + "\n")
    return path


# --- the throwaway disk ------------------------------------------------------------


async def throwaway_copy(image: Path, copy: Path) -> Path:
    """A sparse raw copy of image at copy: the disk the command-running guest uses."""
    started = time.monotonic()
    if disk_format(image) == "raw":
        await run(["cp", "--sparse=always", "--reflink=auto", image, copy])
    else:
        await run(["qemu-img", "convert", "-f", "qcow2", "-O", "raw", image, copy])
    log.info("throwaway copy of %s in %.1fs", image.name, time.monotonic() - started)
    return copy


async def prepare_disk(
    image: Path, scratch: Path, commands: Sequence[str], command_timeout: int,
    add_files: AddFiles | None = None,
) -> Path:  # fmt: skip
    """The throwaway disk: image copied into scratch, the runner added to its
    root: through a loop mount here, or by add_files (vm isolation: the
    appliance writes them, the host mounts nothing a recipe's code wrote)."""
    copy = await throwaway_copy(image, scratch / "throwaway.raw")
    files = guest_files(commands, command_timeout)
    if add_files is not None:
        await add_files(copy, files)
        return copy
    async with rootfs.mounted_root(copy, scratch / "root") as root:
        await asyncio.to_thread(add_to_root, root, files)
    return copy


# --- the host's side ---------------------------------------------------------------


async def wait_for_results(
    vm: Vm, channel: Path, commands: Sequence[str], command_timeout: int, deadline: float,
    poll: float = 0.5,
) -> list[CommandResult]:  # fmt: skip
    """Reads the results port until the runner is done. Raises CommandsTimeout past
    deadline (a time.monotonic() value), BootFailed if the guest stops first."""
    text, seen = "", 0
    while True:
        chunk, seen = _read_from(channel, seen)
        text += chunk
        results, done = parse_results(text, commands, command_timeout)
        if done:
            return results
        if not await vm.running():
            raise BootFailed(
                f"{vm.name} stopped while running test command {len(results) + 1}",
                *vm._evidence(),
            )
        if time.monotonic() > deadline:
            raise CommandsTimeout(
                f"{vm.name}: test command {len(results) + 1} of {len(commands)} "
                f"(`{commands[min(len(results), len(commands) - 1)]}`) did not report "
                "in time: the guest seems hung",
                *vm._evidence(),
            )
        await asyncio.sleep(poll)


def overall_deadline(started: float, boot_timeout: float, count: int, timeout: int) -> float:
    return started + boot_timeout + count * (timeout + SLACK_PER_COMMAND) + SLACK


async def boot_test_commands(
    image: Path,
    commands: Sequence[str],
    *,
    command_timeout: int,
    name: str,
    console_log: Path,
    timeout: float,  # noqa: ASYNC109 (the boot's, counted from the domain's start)
    kernel_dir: Path | None,
    cache_dir: Path,
    network: Literal["user", "none"] = "user",
    fix_kvm_device: bool = True,
    add_files: AddFiles | None = None,
) -> CommandsRun:
    """boot_test, then the commands inside the guest. Returns every command's result,
    failing ones included (see raise_on_failure): the caller records them first."""
    uri = await asyncio.to_thread(ensure_libvirtd, fix_kvm_device=fix_kvm_device)
    accel = await host_accel(kernel_dir, cache_dir / "accel.json")
    with _scratch_dir(None) as scratch:
        disk = await prepare_disk(image, scratch, commands, command_timeout, add_files)
        machine = DiskBoot(disk, grow_by=GROW_TEST_BYTES)
        channel = scratch / "results.log"
        runner = VmRunner(uri, accel)
        async with runner.boot(
            name, machine, console_log, network=network, scratch=scratch, channel_log=channel
        ) as vm:
            boot = await vm.wait_for_login(timeout)
            deadline = overall_deadline(vm.started, timeout, len(commands), command_timeout)
            results = await wait_for_results(vm, channel, commands, command_timeout, deadline)
    for index, result in enumerate(results):
        log.info("test command %d `%s`: status %d in %.1fs", index + 1, result.command,
                 result.exit_status, result.seconds)  # fmt: skip
    return CommandsRun(boot, results)
