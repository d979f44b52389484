"""Running a domain: boots an image in a throw-away libvirt domain and waits for a
login prompt on its serial console.

- Every domain is transient, started with AUTODESTROY (libvirt destroys it if the
  builder's connection drops, even on SIGKILL) and destroyed explicitly on every
  path, cancellation included.
- The image under test is never written: the guest runs on a qcow2 overlay in a
  temporary directory, so first-boot changes never reach the artifact.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import stat
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

import libvirt

from kiln_builder.libvirtd import ensure_libvirtd
from kiln_builder.resources import claimed_tempdir
from kiln_builder.vm.accel import Accel, _read, default_vcpus, host_accel
from kiln_builder.vm.domain import (
    DiskBoot,
    DomainSpec,
    KernelBoot,
    Machine,
    Owner,
    disk_format,
    domain_name,
    domain_xml,
)
from kiln_common.errors import AlreadyExists, FailedPrecondition, Unavailable
from kiln_common.proc import run

log = logging.getLogger(__name__)

T = TypeVar("T")

TAIL_LINES = 30


class BootFailed(FailedPrecondition):
    """The image did not reach a login prompt. console_tail holds the last lines
    of its serial console; the whole log stays in console_log."""

    def __init__(self, message: str, console_log: Path, console_tail: list[str], accel: Accel):
        tail = "\n".join(console_tail) or "(the console stayed empty)"
        super().__init__(f"{message}; last console lines ({console_log}):\n{tail}")
        self.console_log = console_log
        self.console_tail = console_tail
        self.accel = accel


class BootTimeout(BootFailed):
    """No login prompt within the timeout."""


@dataclass(frozen=True)
class BootResult:
    domain: str
    seconds: float  # from domain start to the login prompt
    accel: Accel
    console_log: Path


# agetty's prompt starts a line: "<hostname> login: ". Kernel or systemd messages may
# follow it on the console, so it need not be the last thing there.
_LOGIN = re.compile(r"^(\S+ )?login: ", re.MULTILINE)
_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\r")


def console_tail(console_log: Path, lines: int = TAIL_LINES) -> list[str]:
    text = _ANSI.sub("", _read(console_log))
    return [line for line in text.splitlines() if line.strip()][-lines:]


@dataclass
class Vm:
    """A running boot; valid inside VmRunner.boot()."""

    name: str
    accel: Accel
    console_log: Path
    started: float  # time.monotonic() when the domain started
    _dom: Any = field(repr=False)

    async def running(self) -> bool:
        try:
            return bool(await asyncio.to_thread(self._dom.isActive))
        except libvirt.libvirtError:
            return False  # transient: a stopped domain no longer exists

    # The timeout counts from the domain's start, not from this call: asyncio.timeout
    # around the call could not say that.
    async def wait_for_login(self, timeout: float, poll: float = 0.5) -> BootResult:  # noqa: ASYNC109
        """Waits for a login prompt on the serial console. Raises BootTimeout after
        timeout seconds (counted from the domain's start), or BootFailed at once if the
        guest stops first."""
        deadline = self.started + timeout
        seen = 0
        window = ""
        while True:
            # Read only what is new; keep a little of the old in case the prompt was split.
            chunk, seen = _read_from(self.console_log, seen)
            window = _recent_lines(window + chunk)
            if _LOGIN.search(_ANSI.sub("", window)):
                took = time.monotonic() - self.started
                log.info("%s: login prompt after %.1fs (%s)", self.name, took, self.accel.kind)
                return BootResult(self.name, took, self.accel, self.console_log)
            if not await self.running():
                raise BootFailed(f"{self.name} stopped before a login prompt", *self._evidence())
            if time.monotonic() > deadline:
                raise BootTimeout(
                    f"{self.name}: no login prompt within {timeout:.0f}s"
                    f" ({self.accel.kind}: {self.accel.reason})",
                    *self._evidence(),
                )
            await asyncio.sleep(poll)

    def _evidence(self) -> tuple[Path, list[str], Accel]:
        return self.console_log, console_tail(self.console_log), self.accel


def _recent_lines(text: str, keep: int = 4096) -> str:
    """The end of text, cut at a line start so that _LOGIN's ^ means a real one."""
    if len(text) <= keep:
        return text
    cut = text.find("\n", len(text) - keep)
    return text[cut + 1 :] if cut >= 0 else text[-keep:]


def _read_from(path: Path, offset: int) -> tuple[str, int]:
    try:
        with open(path, "rb") as handle:
            handle.seek(offset)
            data = handle.read()
    except FileNotFoundError:
        return "", offset
    return data.decode(errors="replace"), offset + len(data)


class VmRunner:
    """Boots images in transient libvirt domains on uri, with the accelerator accel."""

    def __init__(self, uri: str, accel: Accel, *, vcpus: int | None = None) -> None:
        self.uri = uri
        self.accel = accel
        self.vcpus = vcpus or default_vcpus(accel)

    @contextlib.asynccontextmanager
    async def boot(
        self,
        build_id: str,
        machine: Machine,
        console_log: Path,
        *,
        network: Literal["user", "none"] = "user",
        scratch: Path | None = None,
        channel_log: Path | None = None,
    ) -> AsyncIterator[Vm]:
        """Starts domain kiln-<build id> and yields it; destroys it on leaving, on
        every path. The serial console goes to console_log, which is kept. scratch is
        where the temporary overlay lives (default: the system's temp dir). A guest's
        second serial port (ttyS1) goes to channel_log, if given."""
        async with contextlib.AsyncExitStack() as stack:
            tmp = stack.enter_context(_scratch_dir(scratch))
            grow_by = machine.grow_by if isinstance(machine, DiskBoot) else 0
            machine = await _staged(machine, tmp)
            overlay = await _overlay(machine.image, tmp / "overlay.qcow2", grow_by)
            conn = await stack.enter_async_context(_connection(self.uri))
            console_log = _console_file(console_log)
            spec = DomainSpec(
                name=domain_name(build_id),
                uuid=str(uuid.uuid4()),
                build_id=build_id,
                accel=self.accel,
                disk=overlay,
                machine=machine,
                console_log=console_log,
                network=network,
                owner=Owner.current(),
                vcpus=self.vcpus,
                channel_log=_console_file(channel_log) if channel_log else None,
            )
            dom = await stack.enter_async_context(_domain(conn, spec))
            yield Vm(spec.name, self.accel, console_log, time.monotonic(), dom)


SCRATCH_PREFIX = "kiln-vm-"


@contextlib.contextmanager
def _scratch_dir(parent: Path | None) -> Iterator[Path]:
    with claimed_tempdir(SCRATCH_PREFIX, parent) as tmp:
        # libvirt runs QEMU as an unprivileged user, which must reach the overlay.
        os.chmod(tmp, 0o711)
        yield tmp


async def _staged(machine: Machine, tmp: Path) -> Machine:
    """machine with every file QEMU opens where libvirt's unprivileged QEMU user can
    reach it. libvirt hands that user the files themselves, not the directories above
    them: an image under a private directory (a pytest tmp_path, a 0700 workspace)
    is linked, or failing that copied, into tmp."""
    image = await _reachable(machine.image, tmp / "image")
    if isinstance(machine, DiskBoot):
        return DiskBoot(image)
    kernel = await _reachable(machine.kernel, tmp / "kernel")
    initrd = await _reachable(machine.initrd, tmp / "initrd") if machine.initrd else None
    return KernelBoot(image, kernel, initrd, machine.cmdline)


async def _reachable(path: Path, staged: Path) -> Path:
    if (usable := _without_copy(path, staged)) is not None:
        return usable
    log.info("copying %s into %s: its directory is closed to QEMU's user", path, staged.parent)
    await run(["cp", "--sparse=always", "--reflink=auto", path, staged])
    return staged


def _without_copy(path: Path, staged: Path) -> Path | None:
    """path itself if every directory above it lets anyone through, else a hard link
    at staged, else None (another filesystem)."""
    real = path.resolve()
    if all(parent.stat().st_mode & stat.S_IXOTH for parent in real.parents):
        return real
    try:
        os.link(real, staged)
    except OSError:
        return None
    return staged


def _console_file(path: Path) -> Path:
    path = path.absolute()  # libvirtd does not share our working directory
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def _base_image(image: Path) -> Path:
    base = image.resolve()  # the overlay must name its backing file absolutely
    if not base.is_file():
        raise FailedPrecondition(f"no image to boot at {image}")
    return base


async def _overlay(image: Path, overlay: Path, grow_by: int = 0) -> Path:
    base = _base_image(image)
    fmt = disk_format(base)
    size = []
    if grow_by:
        info = json.loads((await run(["qemu-img", "info", "--output=json", base])).stdout)
        size = [str(int(info["virtual-size"]) + grow_by)]
    await run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", fmt, "-b", base, overlay, *size])
    return overlay


@contextlib.asynccontextmanager
async def _connection(uri: str) -> AsyncIterator[Any]:
    try:
        conn = await asyncio.to_thread(libvirt.open, uri)
    except libvirt.libvirtError as exc:
        raise Unavailable(f"cannot connect to libvirt at {uri}: {exc}") from exc
    try:
        yield conn
    finally:
        await _to_thread_to_the_end(conn.close)


@contextlib.asynccontextmanager
async def _domain(conn: Any, spec: DomainSpec) -> AsyncIterator[Any]:
    xml = domain_xml(spec)
    log.info("starting domain %s (%s, %d vCPUs)", spec.name, spec.accel.kind, spec.vcpus)
    try:
        try:
            dom = await _to_thread_to_the_end(
                conn.createXML, xml, libvirt.VIR_DOMAIN_START_AUTODESTROY
            )
        except libvirt.libvirtError as exc:
            if exc.get_error_code() == libvirt.VIR_ERR_OPERATION_FAILED and "already" in str(exc):
                raise AlreadyExists(f"a domain named {spec.name} is running already") from exc
            raise FailedPrecondition(f"libvirt could not start {spec.name}: {exc}") from exc
        yield dom
    finally:
        # By our own uuid, not by name: a clash over the name must not destroy the
        # other build's domain, and a create that a cancel interrupted is still found.
        await _to_thread_to_the_end(_destroy, conn, spec.uuid, spec.name)


def _destroy(conn: Any, uuid_: str, name: str) -> None:
    try:
        dom = conn.lookupByUUIDString(uuid_)
        dom.destroy()
    except libvirt.libvirtError as exc:
        if exc.get_error_code() != libvirt.VIR_ERR_NO_DOMAIN:
            raise
        return
    log.info("destroyed domain %s", name)


async def _to_thread_to_the_end(fn: Callable[..., T], *args: Any) -> T:
    """Runs a blocking libvirt call in a thread. If the caller is cancelled meanwhile,
    the call still completes (its effect, such as a domain created, must be known so
    it can be undone) before the cancellation goes on."""
    task = asyncio.ensure_future(asyncio.to_thread(fn, *args))
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        while not task.done():
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.shield(task)
        raise


# --- the builder's boot test ------------------------------------------------------


GROW_TEST_BYTES = 1024**3  # the boot test's disk is this much bigger than the image


async def boot_test(
    image: Path,
    *,
    name: str,
    console_log: Path,
    timeout: float,  # noqa: ASYNC109 (counted from the domain's start)
    kernel_dir: Path | None,
    cache_dir: Path,
    network: Literal["user", "none"] = "user",
    fix_kvm_device: bool = True,
) -> BootResult:
    """Boots a whole-disk image to a login prompt: libvirtd started if need be, KVM
    if this host can really run it (probed with a kernel from kernel_dir, typically
    the image's /boot, once per host), the console kept in console_log."""
    uri = await asyncio.to_thread(ensure_libvirtd, fix_kvm_device=fix_kvm_device)
    accel = await host_accel(kernel_dir, cache_dir / "accel.json")
    machine = DiskBoot(image, grow_by=GROW_TEST_BYTES)
    async with VmRunner(uri, accel).boot(name, machine, console_log, network=network) as vm:
        return await vm.wait_for_login(timeout)
