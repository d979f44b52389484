"""The builder's VM runner: boots an image in a throw-away libvirt domain and
waits for a login prompt on its serial console.

Three rules shape it:
- KVM only when KVM can really run a guest (probe_accel); otherwise TCG, and the
  result says which and why. Some nested hosts expose a /dev/kvm on which a stock
  kernel hangs without a word.
- Every domain is transient, started with AUTODESTROY (libvirt destroys it if the
  builder's connection drops, even on SIGKILL) and destroyed explicitly on every
  path, cancellation included. reap_orphans() covers what is left: a domain whose
  builder died while libvirtd was not watching.
- The image under test is never written: the guest runs on a qcow2 overlay in a
  temporary directory, so first-boot changes never reach the artifact.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import re
import socket
import stat
import tempfile
import time
import uuid
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

import libvirt

from kiln_builder.libvirtd import ensure_libvirtd, quiet_libvirt
from kiln_common.errors import AlreadyExists, FailedPrecondition, Unavailable
from kiln_common.proc import process_start, run

log = logging.getLogger(__name__)
quiet_libvirt()

T = TypeVar("T")

QEMU = "qemu-system-x86_64"
KVM_DEVICE = Path("/dev/kvm")
KILN_NS = "https://kiln.dev/xmlns/libvirt/domain/1"
DOMAIN_PREFIX = "kiln-"
MEMORY_MIB = 1024
TAIL_LINES = 30

# --- accelerator probe -------------------------------------------------------------

# No root and no init: a kernel that runs at all reaches its root-mount panic within
# a second or two and, with panic=-1 and -no-reboot, QEMU then exits by itself. The
# initramfs (if any) is unpacked but not run, so the probe stays fast.
PROBE_CMDLINE = "console=ttyS0 panic=-1 root=/dev/nonexistent rdinit=/kiln-probe-no-init"
# A kernel under working KVM prints its banner well within a second; one under TCG
# takes several, and on this kind of broken KVM it never does.
PROBE_BANNER_WITHIN = 5.0
PROBE_PANIC_WITHIN = 30.0
_BANNER = "Linux version"
_PANIC = "Kernel panic"


@dataclass(frozen=True)
class Accel:
    """How guests run here: hardware KVM, or QEMU's TCG emulation (slower)."""

    kind: Literal["kvm", "tcg"]
    reason: str

    @property
    def domain_type(self) -> str:
        return "kvm" if self.kind == "kvm" else "qemu"


async def probe_accel(
    kernel: Path,
    initrd: Path | None,
    cache: Path | None,
    *,
    banner_within: float = PROBE_BANNER_WITHIN,
    panic_within: float = PROBE_PANIC_WITHIN,
) -> Accel:
    """Boots kernel for a few seconds under -accel kvm: KVM if it gets as far as its
    root-mount panic, else TCG with the reason. The verdict is kept in cache (a JSON
    file keyed by the host kernel release and /dev/kvm presence): one probe per builder.
    """
    key = _probe_key()
    if cache is not None and (known := _cached(cache, key)) is not None:
        return known
    accel = await _probe(kernel, initrd, banner_within, panic_within)
    log.info("accelerator: %s (%s)", accel.kind, accel.reason)
    if cache is not None:
        _store(cache, key, accel)
    return accel


def _probe_key() -> str:
    return f"{os.uname().release} kvm={'present' if KVM_DEVICE.exists() else 'absent'}"


def _cached(cache: Path, key: str) -> Accel | None:
    try:
        entry = json.loads(cache.read_text())[key]
        return Accel(entry["kind"], f"{entry['reason']} (verdict cached in {cache})")
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _store(cache: Path, key: str, accel: Accel) -> None:
    try:
        verdicts = json.loads(cache.read_text())
    except (OSError, ValueError):
        verdicts = {}
    verdicts[key] = asdict(accel)
    cache.parent.mkdir(parents=True, exist_ok=True)
    partial = cache.with_name(f".{cache.name}.{os.getpid()}")
    partial.write_text(json.dumps(verdicts, indent=2, sort_keys=True) + "\n")
    partial.replace(cache)  # atomic: two builders probing at once never see half a file


def _kvm_module() -> str:
    paravirtual = Path("/sys/module/kvm_pvm").exists()
    return " (the host's KVM is the paravirtual kvm_pvm module)" if paravirtual else ""


def _no_kvm_device() -> Accel | None:
    if not KVM_DEVICE.exists():
        return Accel("tcg", f"{KVM_DEVICE} does not exist")
    if not os.access(KVM_DEVICE, os.R_OK | os.W_OK):
        return Accel("tcg", f"{KVM_DEVICE} is not readable and writable by this process")
    return None


async def _probe(
    kernel: Path, initrd: Path | None, banner_within: float, panic_within: float
) -> Accel:
    if (missing := _no_kvm_device()) is not None:
        return missing
    with tempfile.TemporaryDirectory(prefix="kiln-kvm-probe-") as tmp:
        console = Path(tmp) / "console.log"
        argv = [
            QEMU, "-accel", "kvm", "-machine", "pc", "-m", "256",
            "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
            "-serial", f"file:{console}",
            "-kernel", str(kernel), "-append", PROBE_CMDLINE,
        ] + (["-initrd", str(initrd)] if initrd else [])  # fmt: skip
        return await _watch_probe(argv, console, banner_within, panic_within)


async def _watch_probe(
    argv: list[str], console: Path, banner_within: float, panic_within: float
) -> Accel:
    started = time.monotonic()
    qemu = asyncio.create_task(run(argv, check=False))
    try:
        while not qemu.done():
            await asyncio.wait([qemu], timeout=0.1)
            text = _read(console)
            waited = time.monotonic() - started
            if _BANNER not in text and waited > banner_within:
                return Accel(
                    "tcg",
                    f"under -accel kvm the kernel printed nothing in {banner_within:.0f}s:"
                    f" KVM accepts a guest here but does not run it{_kvm_module()}",
                )
            if waited > panic_within:
                return Accel(
                    "tcg",
                    f"under -accel kvm the kernel did not reach its panic in {panic_within:.0f}s",
                )
    finally:
        # Cancelling run() terminates then kills QEMU; wait for that on every path.
        qemu.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await qemu
    return _verdict(qemu.result().returncode, qemu.result().stdout, _read(console), started)


def _verdict(returncode: int, qemu_output: str, console: str, started: float) -> Accel:
    elapsed = time.monotonic() - started
    if _BANNER in console and _PANIC in console:
        return Accel("kvm", f"KVM ran a test kernel to its root-mount panic in {elapsed:.1f}s")
    how = f"killed by signal {-returncode}" if returncode < 0 else f"exit status {returncode}"
    stage = "after the kernel's banner" if _BANNER in console else "before the kernel printed"
    said = _last_line(qemu_output) or "no message"
    return Accel("tcg", f"{QEMU} -accel kvm stopped ({how}) {stage}: {said}")


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except FileNotFoundError:
        return ""


def _last_line(text: str) -> str:
    lines = text.strip().splitlines()
    return lines[-1] if lines else ""


# --- what to boot ------------------------------------------------------------------


@dataclass(frozen=True)
class DiskBoot:
    """A whole-disk image (qcow2 or raw) booted through the BIOS, as a cloud would.
    grow_by enlarges the guest's disk (the overlay) beyond the image, as a cloud
    flavour with a bigger disk does, so that growing the root is exercised."""

    image: Path
    grow_by: int = 0


@dataclass(frozen=True)
class KernelBoot:
    """A root-filesystem image without partition table or bootloader, booted by
    handing QEMU the kernel directly; the image is the guest's /dev/vda."""

    image: Path
    kernel: Path
    initrd: Path | None
    cmdline: str = "root=/dev/vda rw console=ttyS0"


Machine = DiskBoot | KernelBoot


def disk_format(image: Path) -> Literal["qcow2", "raw"]:
    # Read from the magic rather than trusted from a name: QEMU must never be left
    # to guess a format (a raw image that looks like qcow2 could name a backing file).
    with open(image, "rb") as handle:
        return "qcow2" if handle.read(4) == b"QFI\xfb" else "raw"


@dataclass(frozen=True)
class Owner:
    """The builder process that owns a domain, recorded in the domain's metadata.
    started (the process's start time in clock ticks after boot) tells a reused pid."""

    host: str
    pid: int
    started: int | None

    @classmethod
    def current(cls) -> Owner:
        return cls(socket.gethostname(), os.getpid(), process_start(os.getpid()))


def domain_name(build_id: str) -> str:
    """kiln-<build id>, with characters libvirt or a shell might trip on replaced. A
    short hash of the raw id is added when anything was replaced, so two build ids
    that sanitise alike still get distinct domains."""
    clean = re.sub(r"[^A-Za-z0-9_.-]+", "-", build_id).strip("-.")[:48]
    if clean != build_id or not clean:
        clean = f"{clean}-{hashlib.sha256(build_id.encode()).hexdigest()[:8]}".lstrip("-")
    return f"{DOMAIN_PREFIX}{clean}"


# --- domain XML --------------------------------------------------------------------


@dataclass(frozen=True)
class DomainSpec:
    name: str
    uuid: str
    build_id: str
    accel: Accel
    disk: Path  # what the guest writes to: the overlay
    machine: Machine
    console_log: Path
    network: Literal["user", "none"]
    owner: Owner
    vcpus: int
    memory_mib: int = MEMORY_MIB


def domain_xml(spec: DomainSpec) -> str:
    domain = ET.Element("domain", type=spec.accel.domain_type)
    ET.SubElement(domain, "name").text = spec.name
    ET.SubElement(domain, "uuid").text = spec.uuid
    domain.append(_metadata(spec))
    ET.SubElement(domain, "memory", unit="MiB").text = str(spec.memory_mib)
    ET.SubElement(domain, "vcpu").text = str(spec.vcpus)
    domain.append(_os(spec.machine))
    features = ET.SubElement(domain, "features")
    ET.SubElement(features, "acpi")
    ET.SubElement(features, "apic")
    ET.SubElement(domain, "clock", offset="utc")
    # A boot test runs once: a guest that reboots, powers off or crashes is finished.
    for event in ("on_poweroff", "on_reboot", "on_crash"):
        ET.SubElement(domain, event).text = "destroy"
    domain.append(_devices(spec))
    return ET.tostring(domain, encoding="unicode")


def _metadata(spec: DomainSpec) -> ET.Element:
    metadata = ET.Element("metadata")
    kiln = ET.SubElement(metadata, "kiln:vm", {"xmlns:kiln": KILN_NS})
    ET.SubElement(kiln, "kiln:build").text = spec.build_id
    ET.SubElement(kiln, "kiln:host").text = spec.owner.host
    ET.SubElement(kiln, "kiln:pid").text = str(spec.owner.pid)
    if spec.owner.started is not None:
        ET.SubElement(kiln, "kiln:pid-start").text = str(spec.owner.started)
    return metadata


def _os(machine: Machine) -> ET.Element:
    os_ = ET.Element("os")
    ET.SubElement(os_, "type", arch="x86_64", machine="pc").text = "hvm"
    if isinstance(machine, KernelBoot):
        ET.SubElement(os_, "kernel").text = str(machine.kernel.resolve())
        if machine.initrd is not None:
            ET.SubElement(os_, "initrd").text = str(machine.initrd.resolve())
        ET.SubElement(os_, "cmdline").text = machine.cmdline
    else:
        ET.SubElement(os_, "boot", dev="hd")  # SeaBIOS, as the image's bootloader expects
    return os_


def _devices(spec: DomainSpec) -> ET.Element:
    devices = ET.Element("devices")
    disk = ET.SubElement(devices, "disk", type="file", device="disk")
    # The overlay is thrown away after the boot: no need to flush it.
    ET.SubElement(disk, "driver", name="qemu", type="qcow2", cache="unsafe")
    ET.SubElement(disk, "source", file=str(spec.disk))
    ET.SubElement(disk, "target", dev="vda", bus="virtio")
    if spec.network == "user":
        nic = ET.SubElement(devices, "interface", type="user")
        ET.SubElement(nic, "model", type="virtio")
    serial = ET.SubElement(devices, "serial", type="file")
    ET.SubElement(serial, "source", path=str(spec.console_log), append="off")
    ET.SubElement(serial, "target", port="0")
    ET.SubElement(devices, "memballoon", model="none")
    return devices


def read_owner(dom: Any) -> tuple[str, Owner] | None:
    """(build id, owner) from a domain's Kiln metadata, or None if it has none."""
    try:
        text = dom.metadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, KILN_NS, 0)
    except libvirt.libvirtError:
        return None
    # libvirt hands the element back without its namespace: match local names.
    fields = {child.tag.rpartition("}")[2]: child.text or "" for child in ET.fromstring(text)}
    pid, started = fields.get("pid", ""), fields.get("pid-start", "")
    if not pid.isdigit():
        return None
    owner = Owner(fields.get("host", ""), int(pid), int(started) if started.isdigit() else None)
    return fields.get("build", ""), owner


# --- running a domain --------------------------------------------------------------


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


def default_vcpus(accel: Accel) -> int:
    """Two under KVM. Under TCG each vCPU is a busy host thread: two only where the
    host has CPUs to spare. (On a 2-CPU host, five boots each way took 29.1 s mean
    with one vCPU and 30.0 s with two: no gain, and two held both CPUs.)"""
    if accel.kind == "kvm":
        return 2
    return 2 if (os.cpu_count() or 1) >= 4 else 1


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
    ) -> AsyncIterator[Vm]:
        """Starts domain kiln-<build id> and yields it; destroys it on leaving, on
        every path. The serial console goes to console_log, which is kept. scratch is
        where the temporary overlay lives (default: the system's temp dir)."""
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
            )
            dom = await stack.enter_async_context(_domain(conn, spec))
            yield Vm(spec.name, self.accel, console_log, time.monotonic(), dom)


@contextlib.contextmanager
def _scratch_dir(parent: Path | None) -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="kiln-vm-", dir=parent) as tmp:
        # libvirt runs QEMU as an unprivileged user, which must reach the overlay.
        os.chmod(tmp, 0o711)
        yield Path(tmp)


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


async def host_accel(kernel_dir: Path | None, cache: Path) -> Accel:
    """probe_accel with the newest kernel (and its initrd) found in kernel_dir."""
    found = _newest_kernel(kernel_dir)
    if found is None:
        return _cached(cache, _probe_key()) or Accel(
            "tcg", f"no kernel in {kernel_dir} to probe KVM with, and no verdict cached"
        )
    return await probe_accel(*found, cache)


def _newest_kernel(kernel_dir: Path | None) -> tuple[Path, Path | None] | None:
    kernels = list(kernel_dir.glob("vmlinuz-*")) if kernel_dir else []
    if not kernels:
        return None
    # By version, numbers compared as numbers: 6.1.0-10 is newer than 6.1.0-9.
    kernel = max(
        kernels, key=lambda p: [int(x) if x.isdigit() else x for x in _DIGITS.split(p.name)]
    )
    initrd = kernel.with_name(kernel.name.replace("vmlinuz-", "initrd.img-", 1))
    return kernel, initrd if initrd.exists() else None


_DIGITS = re.compile(r"(\d+)")


# --- janitor -----------------------------------------------------------------------


async def reap_orphans(uri: str) -> list[str]:
    """Destroys running kiln-* domains whose recorded builder, on this host, is dead.
    Returns their names. Call it when a builder starts."""
    return await asyncio.to_thread(_reap, uri)


def _reap(uri: str) -> list[str]:
    try:
        conn = libvirt.open(uri)
    except libvirt.libvirtError as exc:
        raise Unavailable(f"cannot connect to libvirt at {uri}: {exc}") from exc
    try:
        domains = conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE)
        return [dom.name() for dom in domains if _orphaned(dom) and _destroyed(dom)]
    finally:
        conn.close()


def _orphaned(dom: Any) -> bool:
    name = dom.name()
    if not name.startswith(DOMAIN_PREFIX):
        return False
    found = read_owner(dom)
    if found is None:
        log.warning("%s has no Kiln metadata: left alone", name)
        return False
    owner = found[1]
    # Another host's pid means nothing here: that builder reaps its own.
    if owner.host != socket.gethostname() or _owner_alive(owner):
        return False
    log.warning("destroying orphan domain %s (builder pid %d is gone)", name, owner.pid)
    return True


def _destroyed(dom: Any) -> bool:
    try:
        dom.destroy()
    except libvirt.libvirtError as exc:  # it may have stopped meanwhile
        log.warning("could not destroy %s: %s", dom.name(), exc)
        return False
    return True


def _owner_alive(owner: Owner) -> bool:
    started = process_start(owner.pid)
    if started is None:
        return False
    return owner.started is None or started == owner.started
