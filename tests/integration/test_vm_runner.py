"""The builder's VM runner against real libvirtd and QEMU: a Debian root filesystem
boots to a login prompt, every domain is destroyed on every path, the janitor
reaps orphans and a killed builder's scratch dirs, and the KVM probe tells a KVM
that cannot run a guest."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import libvirt
import pytest
from support import await_until

from kiln_builder.resources import OWNER_FILE, janitor
from kiln_builder.vm import (
    SCRATCH_PREFIX,
    Accel,
    BootTimeout,
    DiskBoot,
    DomainSpec,
    KernelBoot,
    Owner,
    VmRunner,
    domain_name,
    domain_xml,
    probe_accel,
    read_owner,
    reap_orphans,
)
from kiln_common.proc import process_start, run, run_sync, spawn, stop_pid

if TYPE_CHECKING:
    from conftest import TestRootfs  # the fixture's type; conftest is not imported at run time

pytestmark = [pytest.mark.integration, pytest.mark.build]

BOOT_TIMEOUT = 180.0  # TCG reaches the prompt in 30-50 s here


def kvm_cannot_run_guests_here() -> bool:
    # This machine's paravirtual kvm_pvm, or no KVM at all: the probe must say TCG.
    return Path("/sys/module/kvm_pvm").exists() or not Path("/dev/kvm").exists()


@pytest.fixture
def runner(libvirt_uri: str, accel: Accel) -> VmRunner:
    return VmRunner(libvirt_uri, accel)


def build_id(what: str) -> str:
    return f"test/{what} {uuid.uuid4().hex[:6]}"  # "/" and " " exercise the sanitising


def kernel_boot(rootfs: TestRootfs) -> KernelBoot:
    return KernelBoot(rootfs.image, rootfs.kernel, rootfs.initrd)


async def kiln_domains(uri: str = "qemu:///system") -> list[str]:
    listed = await run(["virsh", "-c", uri, "list", "--all", "--name"])
    return [n for n in listed.stdout.split() if n.startswith("kiln-")]


async def assert_gone(*names: str) -> None:
    """None of names, nor any Kiln domain this process owns, is left. (Other kiln-*
    domains may belong to test runs working beside this one.)"""
    left = await kiln_domains()
    assert not set(names) & set(left), left
    assert not [n for n in left if owned_by_me(n)], left


def owned_by_me(name: str) -> bool:
    conn = libvirt.open("qemu:///system")
    try:
        found = read_owner(conn.lookupByName(name))
    except libvirt.libvirtError:
        return False  # gone meanwhile
    finally:
        conn.close()
    return found is not None and found[1].pid == os.getpid()


async def test_rootfs_boots_to_a_login_prompt_on_the_serial_console(
    runner: VmRunner, test_rootfs: TestRootfs, tmp_path: Path
) -> None:
    console = tmp_path / "out" / "console.log"
    bid = build_id("boot")
    async with runner.boot(bid, kernel_boot(test_rootfs), console) as vm:
        assert vm.name == domain_name(bid)
        assert vm.name.startswith("kiln-test-boot-") and "/" not in vm.name
        result = await vm.wait_for_login(BOOT_TIMEOUT)
    print(f"login prompt after {result.seconds:.1f}s under {result.accel}")

    assert result.domain == vm.name
    assert 0 < result.seconds < BOOT_TIMEOUT
    if kvm_cannot_run_guests_here():
        assert result.accel.kind == "tcg"
    assert result.accel.reason
    assert result.console_log == console
    text = console.read_text(errors="replace")  # kept after the domain is gone
    assert "Linux version" in text
    assert "login:" in text
    await assert_gone(vm.name)


@pytest.fixture
def private_rootfs(test_rootfs: TestRootfs, tmp_path: Path) -> KernelBoot:
    """The test image behind a directory libvirt's QEMU user cannot enter (pytest's
    tmp dirs are 0700), as a build workspace may be: the runner must stage it."""
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    for name in ("image", "kernel", "initrd"):
        os.link(getattr(test_rootfs, name), private / name)
    return KernelBoot(private / "image", private / "kernel", private / "initrd")


async def test_timeout_raises_with_the_console_tail_and_destroys_the_domain(
    runner: VmRunner, private_rootfs: KernelBoot, tmp_path: Path
) -> None:
    console = tmp_path / "console.log"
    started = time.monotonic()
    with pytest.raises(BootTimeout) as caught:
        async with runner.boot(build_id("timeout"), private_rootfs, console) as vm:
            await vm.wait_for_login(12.0)
    assert time.monotonic() - started < 25

    error = caught.value
    assert 0 < len(error.console_tail) <= 30
    assert all(line.strip() for line in error.console_tail)
    # The kernel is talking (the very last line may be half written).
    assert any(re.match(r"\[ *\d+\.\d+\] ", line) for line in error.console_tail)
    assert error.console_tail[-1] in str(error)
    assert "no login prompt within 12s" in str(error)
    assert error.accel == runner.accel
    assert error.console_log == console
    assert "Linux version" in console.read_text(errors="replace")
    await assert_gone(vm.name)


async def test_cancelling_a_boot_destroys_its_domain(
    runner: VmRunner, test_rootfs: TestRootfs, tmp_path: Path
) -> None:
    names: list[str] = []
    running = asyncio.Event()

    async def boot() -> None:
        async with runner.boot(
            build_id("cancel"), kernel_boot(test_rootfs), tmp_path / "console.log"
        ) as vm:
            names.append(vm.name)
            running.set()
            await vm.wait_for_login(BOOT_TIMEOUT)

    task = asyncio.create_task(boot())
    await asyncio.wait_for(running.wait(), 30)
    assert names[0] in await kiln_domains()
    await asyncio.sleep(1.0)  # let the guest get going
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await assert_gone(*names)


@pytest.fixture
def blank_dir() -> Iterator[Path]:
    """For disks with nothing to boot (SeaBIOS idles on them, cheaply). Not tmp_path:
    domains started without the runner get no help reaching a private directory."""
    with tempfile.TemporaryDirectory(prefix="kiln-test-") as tmp:
        os.chmod(tmp, 0o755)
        yield Path(tmp)


def blank_disk(directory: Path, name: str) -> Path:
    disk = directory / f"{name}.qcow2"
    run_sync(["qemu-img", "create", "-q", "-f", "qcow2", disk, "64M"])
    return disk


# A builder in miniature: boots a blank disk and waits, to be killed.
BUILDER = """
import asyncio, sys
from pathlib import Path
from kiln_builder.vm import Accel, DiskBoot, VmRunner

async def main() -> None:
    uri, build, disk, console = sys.argv[1:]
    runner = VmRunner(uri, Accel("tcg", "test"))
    async with runner.boot(build, DiskBoot(Path(disk)), Path(console), network="none") as vm:
        print("running", vm.name, flush=True)
        await asyncio.sleep(600)

asyncio.run(main())
"""


async def test_a_builder_killed_with_sigkill_leaves_no_domain_and_a_reclaimable_scratch_dir(
    libvirt_uri: str, blank_dir: Path, tmp_path: Path
) -> None:
    log = tmp_path / "builder.log"
    disk = blank_disk(blank_dir, "sigkill")
    argv = [sys.executable, "-c", BUILDER, libvirt_uri, build_id("sigkill"), disk, tmp_path / "c"]
    child = spawn(argv, log_file=log)
    try:
        await await_until(
            "the builder to start its domain",
            lambda: "running " in log.read_text() or child.poll() is not None,
            30,
            interval=0.1,
        )
        assert "running " in log.read_text(), log.read_text()
        name = log.read_text().split("running ", 1)[1].split()[0]
        assert name in await kiln_domains(libvirt_uri)
        owner = f"{child.pid} {process_start(child.pid)}"  # as the builder claims
        os.kill(child.pid, signal.SIGKILL)  # no finally, no atexit: only libvirt can clean up
        child.wait()
    finally:
        if child.poll() is None:
            stop_pid(child.pid)

    # AUTODESTROY: libvirtd destroys the domain when the builder's connection drops.
    async def gone() -> bool:
        return name not in await kiln_domains(libvirt_uri)

    await await_until(f"{name} to go with its builder", gone, 15, interval=0.2)

    # Its scratch dir (the overlay) stays behind, claimed by the dead builder:
    # the next builder's clean-up removes it.
    temp = Path(tempfile.gettempdir())
    scratch = [d for d in temp.glob(f"{SCRATCH_PREFIX}*") if _owner(d) == owner]
    assert len(scratch) == 1 and (scratch[0] / "overlay.qcow2").exists()
    released = await janitor(temp, f"{SCRATCH_PREFIX}*", claimed_only=True)
    assert f"workspace {scratch[0]}" in released and not scratch[0].exists()


def _owner(directory: Path) -> str | None:
    try:
        return (directory / OWNER_FILE).read_text().strip()
    except OSError:
        return None


def dead_pid() -> int:
    pid_max = int(Path("/proc/sys/kernel/pid_max").read_text())
    return next(p for p in range(pid_max - 1, 1, -1) if not Path(f"/proc/{p}").exists())


@pytest.fixture
def domains_by_owner(
    libvirt_uri: str, accel: Accel, blank_dir: Path, tmp_path: Path
) -> Iterator[dict[str, str]]:
    """Three domains started without AUTODESTROY, as if their builder had gone while
    libvirtd was not watching: owners dead, reused pid, and alive (this process)."""
    me = Owner.current()
    owners = {
        "dead": Owner(me.host, dead_pid(), None),
        "reused-pid": Owner(me.host, me.pid, (me.started or 0) + 1),
        "alive": me,
    }
    conn = libvirt.open(libvirt_uri)
    started: dict[str, str] = {}
    try:
        for label, owner in owners.items():
            bid = build_id(f"orphan-{label}")
            disk = blank_disk(blank_dir, label)
            spec = DomainSpec(
                name=domain_name(bid),
                uuid=str(uuid.uuid4()),
                build_id=bid,
                accel=accel,
                disk=disk,
                machine=DiskBoot(disk),
                console_log=tmp_path / f"{label}.log",
                network="none",
                owner=owner,
                vcpus=1,
            )
            conn.createXML(domain_xml(spec), 0)
            started[label] = spec.name
        yield started
    finally:
        for name in started.values():
            with contextlib.suppress(libvirt.libvirtError):  # reaped, as it should be
                conn.lookupByName(name).destroy()
        conn.close()


async def test_reap_orphans_destroys_domains_whose_builder_is_dead(
    libvirt_uri: str, domains_by_owner: dict[str, str]
) -> None:
    reaped = await reap_orphans(libvirt_uri)

    assert domains_by_owner["dead"] in reaped
    assert domains_by_owner["reused-pid"] in reaped
    assert domains_by_owner["alive"] not in reaped
    left = await kiln_domains(libvirt_uri)
    assert domains_by_owner["dead"] not in left
    assert domains_by_owner["reused-pid"] not in left
    assert domains_by_owner["alive"] in left


async def test_probe_answers_quickly_and_caches_its_verdict(
    test_rootfs: TestRootfs, tmp_path: Path
) -> None:
    cache = tmp_path / "accel.json"
    started = time.monotonic()
    first = await probe_accel(test_rootfs.kernel, test_rootfs.initrd, cache)
    probed = time.monotonic() - started
    print(f"probe: {first} in {probed:.1f}s")

    if kvm_cannot_run_guests_here():
        assert first.kind == "tcg"
        assert probed < 15
    assert first.reason
    [entry] = json.loads(cache.read_text()).values()
    assert entry == {"kind": first.kind, "reason": first.reason}

    started = time.monotonic()
    again = await probe_accel(test_rootfs.kernel, test_rootfs.initrd, cache)
    assert time.monotonic() - started < 0.5
    assert again.kind == first.kind
    assert str(cache) in again.reason
