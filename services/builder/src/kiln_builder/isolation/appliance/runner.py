"""Runs one job in the appliance: a plain qemu-system-x86_64 process.

Why a process and not a libvirt domain (as the boot test uses): the job's
report must be read line by line as it comes (QEMU's standard output is the
report channel), the VM lives for one job, and kiln_common.proc already kills a
process group on cancel; PR_SET_PDEATHSIG kills QEMU if the builder itself is
SIGKILLed, and the workspace janitor (resources.reclaim) kills whatever still
holds a file under the workspace. No libvirtd is needed for vm mode."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from kiln_builder.isolation.appliance.image import Appliance
from kiln_builder.isolation.appliance.job import Job, encode
from kiln_builder.isolation.appliance.network import Relay, netdev_args
from kiln_builder.isolation.appliance.protocol import Report, StepReport
from kiln_builder.vm.accel import QEMU, Accel, default_vcpus
from kiln_common.errors import FailedPrecondition
from kiln_common.proc import run

log = logging.getLogger(__name__)

MEMORY_MIB = 512
# The appliance's initramfs mounts /dev/vda read-only and starts init.sh itself.
CMDLINE = "console=ttyS0 panic=-1 quiet net.ifnames=0 mitigations=off"
CONSOLE_TAIL = 30


class JobFailed(FailedPrecondition):
    """A step of the job failed in the appliance; the message names it."""


@dataclass
class ApplianceResult:
    accel: Accel
    boot_seconds: float  # QEMU's start to the appliance's first report line
    seconds: float
    root: str | None
    steps: list[StepReport] = field(default_factory=list)
    export: Path | None = None  # the tar the job handed back (its disk), if it asked


def _drive(path: Path, ident: str, *, readonly: bool) -> list[str]:
    # The format is always given: QEMU must never guess (a raw image that looks
    # like qcow2 could name a backing file on the host).
    opts = f"file={path},format=raw,if=none,id={ident},cache=unsafe"
    opts += ",readonly=on" if readonly else ",discard=unmap"
    return ["-drive", opts, "-device", f"virtio-blk-pci,drive={ident},serial=kiln-{ident}"]


def qemu_argv(
    appliance: Appliance,
    disk: Path,
    job_disk: Path,
    console: Path,
    accel: Accel,
    relays: Sequence[Relay],
    memory_mib: int = MEMORY_MIB,
    out: Path | None = None,
) -> list[str]:
    machine = ["-accel", "kvm", "-cpu", "host"] if accel.kind == "kvm" else ["-accel", "tcg"]
    return [
        QEMU, *machine, "-machine", "pc", "-m", str(memory_mib),
        "-smp", str(default_vcpus(accel)),
        "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
        "-kernel", str(appliance.kernel), "-initrd", str(appliance.initrd),
        "-append", CMDLINE,
        *_drive(appliance.root, "appliance", readonly=True),  # /dev/vda: root=
        *_drive(disk, "target", readonly=False),
        *_drive(job_disk, "job", readonly=True),
        *(_drive(out, "out", readonly=False) if out is not None else []),
        *netdev_args(relays),
        "-serial", f"file:{console}",
        # ttyS1, the report channel, is QEMU's standard output.
        "-chardev", "stdio,id=report,signal=off", "-serial", "chardev:report",
    ]  # fmt: skip


def _tail(path: Path) -> str:
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    return "\n".join(lines[-CONSOLE_TAIL:])


async def run_job(
    appliance: Appliance,
    disk: Path,
    job: Job,
    *,
    work: Path,
    accel: Accel,
    relays: Sequence[Relay],
    log_line: Callable[[str], None],
    timeout: float,  # noqa: ASYNC109 (the whole VM's life)
    out: Path | None = None,
) -> ApplianceResult:
    work.mkdir(parents=True, exist_ok=True)
    job_disk = work / "job.tar"
    job_disk.write_bytes(encode(job))
    console = work / "appliance-console.log"
    report = Report()
    started = time.monotonic()
    booted: list[float] = []

    def on_line(line: str) -> None:
        said = report.feed(line)
        if report.ready is not None and not booted:
            booted.append(time.monotonic() - started)
        if said is not None:
            log_line(said)

    argv = qemu_argv(appliance, disk, job_disk, console, accel, relays, out=out)
    log.info("appliance %s under %s (%s)", appliance.key, accel.kind, accel.reason)
    try:
        done = await asyncio.wait_for(
            run(argv, on_line=on_line, die_with_parent=True, check=False), timeout
        )
    except TimeoutError:
        # Not a passing failure to retry: a step that hangs would hang again.
        raise FailedPrecondition(
            f"the appliance VM did not finish its job in {timeout:.0f}s; console:\n{_tail(console)}"
        ) from None
    finally:
        job_disk.unlink(missing_ok=True)
    result = ApplianceResult(
        accel, round(booted[0] if booted else 0.0, 1),
        round(time.monotonic() - started, 1), report.root, report.steps, out,
    )  # fmt: skip
    _check(report, done.returncode, done.stdout, console)
    return result


def _check(report: Report, returncode: int, output: str, console: Path) -> None:
    failed = report.failed_step()
    if failed is not None:
        tail = "\n".join(failed.tail)
        status = failed.exit_status if failed.exit_status is not None else "none"
        raise JobFailed(f"{failed.name} failed in the appliance VM (exit status {status})"
                        + (f":\n{tail}" if tail else ""))  # fmt: skip
    if not report.done:
        said = output.strip().splitlines()[-5:] if returncode != 0 else []
        raise FailedPrecondition(
            f"the appliance VM stopped before finishing its job (QEMU exit status {returncode})"
            + (": " + " / ".join(said) if said else "")
            + f"; console:\n{_tail(console)}"
        )
    if not report.ok:
        raise JobFailed(f"the appliance VM could not run the job: {report.message}")
