"""vm isolation mode with the real appliance under real QEMU (TCG here): a job
runs on a bare ext4 filesystem image and its results are read back from the
image; the guest reaches the mirror but not the host; a failing script fails
naming its step; no QEMU, loop device or mount outlives a job that succeeded,
failed, was cancelled, or whose builder was SIGKILLed."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from support import REPO, await_until, loops_under, mounts_under, qemus_using, wait_until

from kiln_builder.egress import LOCAL
from kiln_builder.egress_proxy import EgressProxy
from kiln_builder.isolation.appliance import (
    Job,
    JobFailed,
    Packages,
    RunScript,
    WriteFile,
    customise_in_vm,
    ensure_appliance,
)
from kiln_builder.isolation.appliance.runner import ApplianceResult
from kiln_builder.layers import LayerStore
from kiln_builder.resources import loop_device, mounted
from kiln_common.proc import run_sync

if TYPE_CHECKING:
    from conftest import TestRootfs

pytestmark = [pytest.mark.integration, pytest.mark.build]

CACHE = REPO / ".cache" / "kiln"  # the builder's cache: the appliance is built once
EPOCH = 1_700_000_000


def assert_nothing_left(under: Path) -> None:
    assert not qemus_using(under), "a QEMU process outlived its job"
    assert not loops_under(under) and not mounts_under(under)


def bare_image(rootfs: TestRootfs, dest: Path) -> Path:
    run_sync(["cp", "--sparse=always", rootfs.image, dest])
    return dest


@pytest.fixture(scope="module")
def layers() -> LayerStore:
    store = LayerStore(CACHE / "layers")
    asyncio.run(ensure_appliance(CACHE, store))  # built here once, outside any test's timing
    return store


class Listener:
    """A TCP listener on every host address: the guest must never reach it."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("0.0.0.0", 0))
        self.port = self.sock.getsockname()[1]
        self.accepted: list[object] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, peer = self.sock.accept()
            except OSError:
                return
            self.accepted.append(peer)
            conn.close()


@pytest.fixture
def listener() -> Iterator[Listener]:
    found = Listener()
    yield found
    found.sock.close()


def host_address() -> str:
    return run_sync(["hostname", "-I"]).stdout.split()[0]


async def read_back(image: Path, mnt: Path, paths: list[str]) -> dict[str, tuple[bytes, int]]:
    """(bytes, st_mode) of each path in the image, loop-mounted read-only."""
    out = {}
    async with loop_device(image) as device, mounted(device, mnt, "-o", "ro") as root:
        for path in paths:
            target = root / path.lstrip("/")
            out[path] = (target.read_bytes(), target.stat().st_mode)
    return out


def test_a_job_runs_in_the_appliance_and_the_guest_reaches_only_the_mirror(
    test_rootfs: TestRootfs, layers: LayerStore, listener: Listener, tmp_path: Path
) -> None:
    image = bare_image(test_rootfs, tmp_path / "bare.ext4")
    doors = f"10.0.2.2/{listener.port} {host_address()}/{listener.port}"
    script = f"""#!/bin/bash
set -euo pipefail
[[ -f /etc/kiln-test ]] && echo "bash ${{BASH_VERSINFO[0]}} at $SOURCE_DATE_EPOCH" > /root/bash-ran
for door in {doors}; do
  if timeout 5 bash -c "echo knock > /dev/tcp/$door" 2>/dev/null; then echo "open $door"
  else echo "closed $door"; fi
done > /root/doors
hello
"""
    job = Job(
        (
            Packages(("hello",)),
            WriteFile("/etc/kiln-test", b"written by Kiln\n", 0o600),
            RunScript(script.encode(), "probe.sh"),
        ),
        epoch=EPOCH,
    )
    lines: list[str] = []
    work = tmp_path / "work"

    async def through_the_egress_proxy() -> tuple[ApplianceResult, EgressProxy]:
        async with EgressProxy(LOCAL) as proxy:
            done = await customise_in_vm(image, job, work=work, cache_dir=CACHE, layers=layers,
                                         log_line=lines.append, proxy=proxy.url)  # fmt: skip
        return done, proxy

    result, proxy = asyncio.run(through_the_egress_proxy())
    assert proxy.served > 0 and proxy.refusals == []  # apt's every connection went through it
    assert [s.name for s in result.steps] == ["packages", "files /etc/kiln-test", "run probe.sh"]
    assert all(s.status == "ok" for s in result.steps)
    assert result.accel.kind in ("kvm", "tcg") and result.root == "/dev/vdb ext4"
    assert "Hello, world!" in lines and "==> packages" in lines  # streamed as they came

    found = asyncio.run(
        read_back(image, tmp_path / "mnt", ["/usr/bin/hello", "/etc/kiln-test", "/root/bash-ran",
                                            "/root/doors", "/var/lib/dpkg/status"])
    )  # fmt: skip
    assert found["/etc/kiln-test"] == (b"written by Kiln\n", 0o100600)
    assert found["/root/bash-ran"][0] == f"bash 5 at {EPOCH}\n".encode()
    assert b"Package: hello\nStatus: install ok installed" in found["/var/lib/dpkg/status"][0]
    assert found["/root/doors"][0].decode().split("\n")[:2] == [
        f"closed {d}" for d in doors.split()
    ]
    assert listener.accepted == []
    assert_nothing_left(tmp_path)


def test_a_failing_script_fails_the_job_naming_the_step(
    test_rootfs: TestRootfs, layers: LayerStore, tmp_path: Path
) -> None:
    image = bare_image(test_rootfs, tmp_path / "bare.ext4")
    job = Job((RunScript(b"echo about to fail\nexit 3\n", "broken.sh"),), epoch=EPOCH)
    with pytest.raises(JobFailed) as failed:
        asyncio.run(
            customise_in_vm(image, job, work=tmp_path / "w", cache_dir=CACHE, layers=layers)
        )
    assert "run broken.sh failed in the appliance VM (exit status 3)" in str(failed.value)
    assert "about to fail" in str(failed.value)
    assert_nothing_left(tmp_path)


def test_an_image_without_a_linux_root_is_refused_saying_what_was_found(
    layers: LayerStore, tmp_path: Path
) -> None:
    image = tmp_path / "blank.raw"
    with open(image, "wb") as f:
        f.truncate(64 * 1024**2)
    run_sync(["mkfs.vfat", image])
    with pytest.raises(JobFailed, match=r"no Linux root filesystem.*vfat"):
        asyncio.run(
            customise_in_vm(image, Job((), epoch=EPOCH), work=tmp_path / "w", cache_dir=CACHE,
                            layers=layers)
        )  # fmt: skip
    assert_nothing_left(tmp_path)


def test_a_cancelled_job_leaves_no_qemu(
    test_rootfs: TestRootfs, layers: LayerStore, tmp_path: Path
) -> None:
    image = bare_image(test_rootfs, tmp_path / "bare.ext4")
    job = Job((RunScript(b"sleep 600\n", "sleepy.sh"),), epoch=EPOCH)

    async def cancel_once_running() -> None:
        task = asyncio.create_task(
            customise_in_vm(image, job, work=tmp_path / "w", cache_dir=CACHE, layers=layers)
        )
        await await_until("the appliance's QEMU", lambda: qemus_using(tmp_path), timeout=60)
        await asyncio.sleep(3)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(cancel_once_running())
    assert_nothing_left(tmp_path)


KILLED_BUILDER = """
import asyncio, sys
from pathlib import Path
from kiln_builder.isolation.appliance import Job, RunScript, customise_in_vm
from kiln_builder.layers import LayerStore
cache = Path(sys.argv[1])
job = Job((RunScript(b"sleep 600\\n", "sleepy.sh"),), epoch=1)
asyncio.run(customise_in_vm(Path(sys.argv[2]), job, work=Path(sys.argv[3]), cache_dir=cache,
                            layers=LayerStore(cache / "layers")))
"""


def test_qemu_dies_with_a_sigkilled_builder(
    test_rootfs: TestRootfs, layers: LayerStore, tmp_path: Path
) -> None:
    image = bare_image(test_rootfs, tmp_path / "bare.ext4")
    builder = subprocess.Popen(
        [sys.executable, "-c", KILLED_BUILDER, str(CACHE), str(image), str(tmp_path / "w")]
    )
    try:
        wait_until("the appliance's QEMU", lambda: qemus_using(tmp_path), timeout=60)
        os.kill(builder.pid, signal.SIGKILL)
        builder.wait()
        wait_until("QEMU to die with its builder", lambda: not qemus_using(tmp_path), timeout=10)
    finally:
        builder.kill()
    assert_nothing_left(tmp_path)


# ---- a directory tree (from-scratch builds), and the same result as the sandbox -------------

SCRIPT = b"""#!/bin/sh
set -e
mkdir -p /opt/kiln
echo "made at $SOURCE_DATE_EPOCH" > /opt/kiln/made
ln /opt/kiln/made /opt/kiln/hardlink
chown nobody:nogroup /opt/kiln/made
"""


def dpkg_packages(root: Path) -> set[str]:
    text = (root / "var/lib/dpkg/status").read_text()
    return {
        block.split("\n", 1)[0]
        + " "
        + next(line for line in block.splitlines() if line.startswith("Version:"))
        for block in text.strip().split("\n\n")
        if "Status: install ok installed" in block
    }


def tree_listing(root: Path) -> dict[str, tuple[int, int, int]]:
    """path -> (mode, uid, gid), apt's downloaded indexes and logs left out (they
    differ from run to run in either mode)."""
    skip = ("var/lib/apt/lists/", "var/cache/", "var/log/")
    out = {}
    for path in root.rglob("*"):
        rel = str(path.relative_to(root))
        if rel.startswith(skip):
            continue
        st = path.lstat()
        out[rel] = (st.st_mode, st.st_uid, st.st_gid)
    return out


def test_a_tree_gets_the_same_contents_in_vm_and_sandbox_mode(
    layers: LayerStore, tmp_path: Path
) -> None:
    from support import bookworm_bootstrap_layer

    from kiln_builder import customize
    from kiln_builder.isolation.appliance import customise_tree_in_vm
    from kiln_builder.layers import extract

    layer = next(p for p in bookworm_bootstrap_layer() if p.name.endswith(".tar.zst"))
    sandboxed, in_vm = tmp_path / "sandbox", tmp_path / "vm"
    script = tmp_path / "script.sh"
    script.write_bytes(SCRIPT)

    async def both() -> None:
        await asyncio.gather(extract(layer, sandboxed), extract(layer, in_vm))
        await customize.install_packages(sandboxed, ["hello"], EPOCH)
        customize.write_file(sandboxed, "/etc/kiln-test", b"x\n", 0o640, "root", "adm")
        await customize.run_script(sandboxed, script, None, tmp_path, EPOCH)
        job = Job((Packages(("hello",)), WriteFile("/etc/kiln-test", b"x\n", 0o640, "root", "adm"),
                   RunScript(SCRIPT, "script.sh")), epoch=EPOCH)  # fmt: skip
        await customise_tree_in_vm(in_vm, job, work=tmp_path / "w", cache_dir=CACHE, layers=layers)

    asyncio.run(both())
    assert dpkg_packages(in_vm) == dpkg_packages(sandboxed)
    assert "Package: hello Version: 2.10-3" in dpkg_packages(in_vm)
    listing_vm, listing_sandbox = tree_listing(in_vm), tree_listing(sandboxed)
    assert sorted(set(listing_vm) ^ set(listing_sandbox)) == []
    differ = [p for p in listing_vm if listing_vm[p] != listing_sandbox[p]]
    assert differ == []
    made = in_vm / "opt/kiln/made"
    assert made.read_text() == f"made at {EPOCH}\n"
    assert made.stat().st_nlink == 2 and made.stat().st_uid == 65534  # hard link and owner kept
    assert (in_vm / "dev/null").is_char_device()  # device nodes come back too
    assert_nothing_left(tmp_path)


def test_the_appliance_finds_the_root_partition_of_a_partitioned_disk(
    test_rootfs: TestRootfs, layers: LayerStore, tmp_path: Path
) -> None:
    disk = tmp_path / "disk.raw"
    fs_bytes = test_rootfs.image.stat().st_size
    with open(disk, "wb") as f:
        f.truncate(fs_bytes + 4 * 1024**2)
    # A GPT disk whose second partition is the root (the first a small unformatted one).
    layout = f"label: gpt\nstart=2048, size=2048\nstart=4096, size={fs_bytes // 512}, type=linux\n"
    subprocess.run(["sfdisk", "-q", str(disk)], input=layout, text=True, check=True)
    run_sync(["dd", f"if={test_rootfs.image}", f"of={disk}", "bs=1M", "seek=2",
              "conv=notrunc,sparse", "status=none"])  # fmt: skip
    job = Job((WriteFile("/etc/kiln-partitioned", b"found\n"),), epoch=EPOCH)
    result = asyncio.run(
        customise_in_vm(disk, job, work=tmp_path / "w", cache_dir=CACHE, layers=layers)
    )
    assert result.root == "/dev/vdb2 ext4"
    root = tmp_path / "root.ext4"
    run_sync(["dd", f"if={disk}", f"of={root}", "bs=1M", "skip=2", "conv=sparse", "status=none"])
    done = run_sync(["debugfs", "-R", "cat /etc/kiln-partitioned", root])
    assert done.stdout.endswith("found\n"), done.stdout
    assert_nothing_left(tmp_path)
