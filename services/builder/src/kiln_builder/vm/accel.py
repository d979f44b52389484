"""The accelerator probe: KVM only when KVM can really run a guest; otherwise TCG,
and the verdict says which and why. Some nested hosts expose a /dev/kvm on which a
stock kernel hangs without a word. The verdict is cached, one probe per builder.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

from kiln_common.proc import run

log = logging.getLogger(__name__)

QEMU = "qemu-system-x86_64"
KVM_DEVICE = Path("/dev/kvm")

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


def default_vcpus(accel: Accel) -> int:
    """Two under KVM. Under TCG each vCPU is a busy host thread: two only where the
    host has CPUs to spare. (On a 2-CPU host, five boots each way took 29.1 s mean
    with one vCPU and 30.0 s with two: no gain, and two held both CPUs.)"""
    if accel.kind == "kvm":
        return 2
    return 2 if (os.cpu_count() or 1) >= 4 else 1


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
